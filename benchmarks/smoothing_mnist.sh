#!/usr/bin/env bash
# Randomized smoothing on real MNIST with the LeNet: Gaussian augmentation (Cohen et al.), stability training (STN)
# and SmoothAdv at sigma 0.25 and 0.5, and STN's sigma = 0.7 setting (Renyi certificate). Each model is trained
# (configs/mnist-lenet-*.toml), copied into the results folder, then certified on every 20th test image (500) with
# N0 = 100, N = 100,000, alpha = 0.001. Everything resumes where it stopped: a trained model is not retrained, a
# certification continues after its last written row (commit the results folder to resume in another checkout;
# an unfinished training resumes from runs/<name>/ in the same checkout).
#
#   CERTKIT_DATA=../shared/data [DEVICE=cuda] [THREADS=1] [N=100000] [MODELS="gaussian-0.25 ..."] [COMPILE=0] \
#       [START=0] [STEP=20] bash benchmarks/smoothing_mnist.sh
#   python benchmarks/smoothing_table.py            # the table against the published numbers
#
# START/STEP certify other test images into certify-start<START>-step<STEP>.jsonl (each part left out when it has its
# default): STEP=4 for every 4th image, START=10 for the other half of every 10th. smoothing_table.py pools them.
#
# CPU cost per model on one core: ~20 min of training (gaussian; stability and SmoothAdv more) and ~45 min of
# certification (the base classifier through torch.compile, ~20,000 LeNet forward passes per second); minutes on a
# GPU. COMPILE=0 certifies eagerly (half the speed on CPU).
set -euo pipefail
OUT=${OUT:-benchmarks/results/smoothing-mnist}
N=${N:-100000}
START=${START:-0}
STEP=${STEP:-20}
part=""
[ "$START" != 0 ] && part="-start$START"
[ "$STEP" != 20 ] && part="$part-step$STEP"
DEVICE=${DEVICE:-cpu}
THREADS=${THREADS:-1}
COMPILE=$([ "${COMPILE:-1}" = 1 ] && echo --compile || true)
MODELS=${MODELS:-"gaussian-0.25 gaussian-0.5 stability-0.25 stability-0.5 smoothadv-0.25 smoothadv-0.5 stability-0.7"}
for m in $MODELS; do
  name=mnist-lenet-$m
  dir=$OUT/$name
  sigma=${m##*-}
  mkdir -p "$dir"
  if [ ! -f "$dir/model.safetensors" ]; then
    certkit train --config "configs/$name.toml" --out "runs/$name" --quiet --device "$DEVICE" --threads "$THREADS"
    cp "runs/$name/model.safetensors" "runs/$name/history.jsonl" "$dir/"
  fi
  cert=cohen
  [ "$m" = stability-0.7 ] && cert=renyi
  certkit smooth certify --checkpoint "$dir/model.safetensors" --data mnist --sigma "$sigma" --certificate "$cert" \
    --n0 100 --n "$N" --alpha 0.001 --start "$START" --step "$STEP" --out "$dir/certify$part" --quiet --device "$DEVICE" --threads "$THREADS" $COMPILE
done
python benchmarks/smoothing_table.py "$OUT"
