#!/usr/bin/env bash
# COLT's released MNIST eps=0.1 network, certified by the cascade (PGD, IBP, CROWN, alpha-CROWN, MILP/HiGHS).
# Usage: CERTKIT_DATA=../shared/data bash benchmarks/colt_cascade.sh [N=1000] [TIMEOUT=120]
# Resumable: rerun the same command after an interruption. The full 10,000-image run of this repository is archived
# as results/colt-mnist-0.1/cascade.jsonl.gz (gunzip it to extend or re-summarise it).
set -euo pipefail
N=${1:-1000}
TIMEOUT=${2:-120}
OUT=benchmarks/results/colt-mnist-0.1
mkdir -p "$OUT"
certkit certify --checkpoint ../shared/models/colt/mnist_0.1.onnx --mean 0.1307 --std 0.3081 \
  --data mnist --eps 0.1 --n "$N" --method cascade --timeout "$TIMEOUT" --threads "${THREADS:-1}" \
  --out "$OUT/cascade.jsonl" --quiet | tee "$OUT/cascade.txt"
python benchmarks/stage_times.py "$OUT/cascade.jsonl" | tee -a "$OUT/cascade.txt"
