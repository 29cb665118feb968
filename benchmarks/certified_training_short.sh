#!/usr/bin/env bash
# Equal-budget comparison of IBP (plain, and with Shi et al.'s initialisation and regulariser), SABR and MTL-IBP
# training on MNIST (COLT's ConvMed, eps 0.1, 6 epochs each, one thread), then CROWN certification of the first
# 1000 test images. Resumes a killed run. Results and logs go to
# benchmarks/results/certified-training-short/. Usage: CERTKIT_DATA=... bash benchmarks/certified_training_short.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=benchmarks/results/certified-training-short
mkdir -p "$OUT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for m in ${METHODS:-ibp ibp-fast sabr mtl-ibp}; do
  run=runs/mnist-$m-0.1-short
  certkit train --config configs/mnist-$m-0.1-short.toml --out "$run" --quiet 2>&1 | tee "$OUT/$m-train.log"
  cp "$run/history.jsonl" "$OUT/$m-history.jsonl"
  certkit certify --checkpoint "$run/model.safetensors" --data mnist --eps 0.1 --method crown --count 1000 \
    --out "$OUT/$m-crown" --quiet 2>&1 | tee "$OUT/$m-certify.log"
done
