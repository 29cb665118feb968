#!/usr/bin/env bash
# IBP training of COLT's MNIST ConvMed at eps=0.1 on CPU, then clean / PGD-40 / IBP-certified accuracy on the
# full 10,000-image test set. Resumable: rerun after a kill and both steps continue where they stopped.
#   CERTKIT_DATA=../shared/data bash benchmarks/mnist_ibp.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/mnist-ibp-0.1}
OUT=benchmarks/results
mkdir -p "$OUT"
start=$(date +%s)
certkit train --config configs/mnist-ibp-0.1.toml --out "$RUN" --quiet | tee "$OUT/mnist_ibp_train.txt"
mid=$(date +%s)
certkit certify --checkpoint "$RUN/model.safetensors" --data mnist --eps 0.1 --pgd-steps 40 \
  --out "$RUN/certify-pgd.jsonl" --quiet | tee "$OUT/mnist_ibp_certify.txt"
certkit certify --checkpoint "$RUN/model.safetensors" --data mnist --eps 0 0.05 0.1 0.15 0.2 0.25 0.3 \
  --out "$RUN/certify-curve.jsonl" --plot "$OUT/mnist_ibp_certified_vs_eps.png" --quiet \
  | tee "$OUT/mnist_ibp_curve.txt"
end=$(date +%s)
echo "wall time: train $((mid - start)) s (this invocation), evaluation $((end - mid)) s" | tee -a "$OUT/mnist_ibp_certify.txt"
cp "$RUN/history.jsonl" "$OUT/mnist_ibp_history.jsonl"
