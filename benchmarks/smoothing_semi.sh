#!/usr/bin/env bash
# Pre-training and semi-supervision for randomized smoothing on MNIST (issue #28 part 5), the measurable stand-in
# for SmoothAdv's CIFAR-10 rows (Salman et al. 2019, Sec. 4.2: ImageNet pre-training, 500k pseudo-labelled Tiny
# Images after Carmon et al. 2019). Here: 6,000 labeled MNIST training images (10 %), the other 54,000 as the
# unlabeled pool (their labels are never read), a standard LeNet on the labeled images as the teacher, and
# Fashion-MNIST as the pre-training set. Every model is a LeNet with sigma = 0.5 (configs/*l6000*.toml):
#
#   standard-l6000            teacher (clean, 6,000 labeled images)
#   gaussian-0.5-l6000        Gaussian augmentation on the labeled images only
#   gaussian-0.5-l6000-long   the same for 180 epochs: as many steps as the self-training run (control)
#   gaussian-0.5-l6000-self   + self-training (half of every batch pseudo-labelled pool images)
#   gaussian-0.5-l6000-pre    fine-tuned from a Fashion-MNIST Gaussian model on the labeled images
#   gaussian-0.5-l6000-pre-self   both
#   smoothadv-0.5-l6000[-self]    SmoothAdv (CPU recipe: one PGD step, m = 2) without / with self-training
#   gaussian-0.5-full, smoothadv-0.5-full   the committed models trained on all 60,000 labels (reference)
#
# Each is certified with Cohen's CERTIFY on every 10th test image (1,000), N0 = 100, N = 10,000, alpha = 0.001
# (at sigma = 0.5 the largest certifiable radius is then 1.6). Resumable: a trained model is not retrained, a
# certification continues after its last row. Kept in the results folder (its 60 MB rule): the teacher, the
# pre-trained model and the two self-training models; the other rows keep their rows and training history only.
#
#   CERTKIT_DATA=../shared/data [THREADS=1] [DEVICE=cpu] [MODELS="..."] bash benchmarks/smoothing_semi.sh
#   python benchmarks/smoothing_semi_table.py      # the table (docs/smoothing.md)
set -euo pipefail
OUT=${OUT:-benchmarks/results/smoothing-semi}
DEVICE=${DEVICE:-cpu}
THREADS=${THREADS:-1}
MODELS=${MODELS:-"standard-l6000 gaussian-0.5-l6000 gaussian-0.5-l6000-self fashion-gaussian-0.5 gaussian-0.5-l6000-pre
  gaussian-0.5-l6000-pre-self smoothadv-0.5-l6000 smoothadv-0.5-l6000-self gaussian-0.5-full smoothadv-0.5-full
  gaussian-0.5-l6000-long"}
for m in $MODELS; do
  case $m in
    fashion-*) name=fashion-mnist-lenet-${m#fashion-} ;;
    *) name=mnist-lenet-$m ;;
  esac
  dir=$OUT/$name
  mkdir -p "$dir"
  ckpt=$dir/model.safetensors
  case $m in
    *-full) ckpt=benchmarks/results/smoothing-mnist/${name%-full}/model.safetensors ;;  # committed there
    *) if [ ! -f "$ckpt" ]; then
         if [ -f "$dir/certify.jsonl" ]; then  # its rows were certified with a model not kept here
           echo "$dir: certify.jsonl is there but not its model; move it away to retrain and recertify" >&2
           exit 1
         fi
         certkit train --config "configs/$name.toml" --out "runs/$name" --quiet --device "$DEVICE" --threads "$THREADS"
         cp "runs/$name/model.safetensors" "runs/$name/history.jsonl" "$dir/"
       fi ;;
  esac
  case $m in
    standard-*|fashion-*) continue ;;  # the teacher and the pre-trained model are not certified on MNIST
  esac
  certkit smooth certify --checkpoint "$ckpt" --data mnist --sigma 0.5 --certificate cohen \
    --n0 100 --n 10000 --alpha 0.001 --step 10 --out "$dir/certify" --quiet --device "$DEVICE" --threads "$THREADS" \
    --compile
done
python benchmarks/smoothing_semi_table.py "$OUT"
