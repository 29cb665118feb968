#!/usr/bin/env bash
# proVAE Table 1 and Fig. 3: train one VAE per eps_train (resumable), then evaluate each on the first N test images:
# ELBO, certified bound at eps_train, ELBO under PGD for eps_attack in {0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2}.
# Usage: CERTKIT_DATA=../shared/data [DATASET=mnist|fashion-mnist] bash benchmarks/provae.sh [N=1000] [EPOCHS]
#        (EPOCHS overrides the configs')
#        EPS="0 0.05" ... runs only those eps_train values (e.g. two processes, one per core)
set -euo pipefail
N=${1:-1000}
DS=${DATASET:-mnist}
OUT=benchmarks/results/provae-$DS
mkdir -p "$OUT"
for e in ${EPS:-0 0.01 0.02 0.05 0.1}; do
  cfg=configs/provae-$DS-eps$e.toml
  if [ -n "${2:-}" ]; then sed "s/^epochs = .*/epochs = $2/" "$cfg" > "/tmp/provae-$DS-eps$e.toml"; cfg="/tmp/provae-$DS-eps$e.toml"; fi
  certkit vae train --config "$cfg" --out "runs/provae-$DS-eps$e" --quiet --threads "${THREADS:-1}"
  certkit vae eval --checkpoint "runs/provae-$DS-eps$e/model.safetensors" --count "$N" \
    --attack-eps 0 0.01 0.02 0.05 0.1 0.15 0.2 --out "$OUT/eps$e.json" --images "$OUT/eps$e.png" --threads "${THREADS:-1}"
  cp "runs/provae-$DS-eps$e/history.jsonl" "$OUT/eps$e-history.jsonl"
done
python benchmarks/provae_table.py "$OUT" | tee "$OUT/table.txt"
