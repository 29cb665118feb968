#!/usr/bin/env bash
# IBP training of COLT's MNIST ConvMed for L-inf eps=0.1 on CPU, then clean / PGD-40 / IBP-certified accuracy on
# the full 10,000-image test set, and IBP-certified accuracy for eps from 0 to 0.3.
# Resumable: rerun after a kill and both training and certification continue where they stopped.
#   CERTKIT_DATA=DATA bash benchmarks/mnist_ibp.sh [configs/mnist-ibp-0.1.toml]
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:-configs/mnist-ibp-0.1.toml}
NAME=$(basename "$CONFIG" .toml)
RUN=runs/$NAME
OUT=benchmarks/results/$NAME
mkdir -p "$OUT"
start=$(date +%s)
certkit train --config "$CONFIG" --out "$RUN" --quiet | tee "$OUT/train.txt"
mid=$(date +%s)
certkit certify --checkpoint "$RUN/model.safetensors" --data mnist --eps 0.1 --pgd-steps 40 \
  --out "$RUN/certify-pgd.jsonl" --quiet | tee "$OUT/certify.txt"
certkit certify --checkpoint "$RUN/model.safetensors" --data mnist --eps 0 0.05 0.1 0.15 0.2 0.25 0.3 \
  --out "$RUN/certify-curve.jsonl" --plot "$OUT/certified_vs_eps.png" --quiet | tee "$OUT/curve.txt"
end=$(date +%s)
echo "wall time of this invocation: train $((mid - start)) s, evaluation $((end - mid)) s" | tee -a "$OUT/certify.txt"
cp "$RUN/history.jsonl" "$OUT/history.jsonl"
cp "$RUN/model.safetensors" "$OUT/model.safetensors"  # the checkpoint behind the figures (benchmarks/results/README.md)
