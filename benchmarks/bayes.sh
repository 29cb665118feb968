#!/usr/bin/env bash
# Wicker et al. 2021 reproduction: train every configs/bnn-$DATASET-*-$LIK.toml posterior (skipped when it exists),
# evaluate it on the first N test images at eps = 0.1 (accuracy, PGD, IBP- and CROWN-certified, OOD entropy),
# collect the JSON in benchmarks/results/bnn-$DATASET/ and print the table + plots (benchmarks/bayes_table.py).
# Usage: CERTKIT_DATA=../shared/data [DATASET=mnist|fashion-mnist] [LIK="ibp standard pgd"] [METHODS="bbb ..."]
#        bash benchmarks/bayes.sh [N=1000]
set -euo pipefail
N=${1:-1000}
DS=${DATASET:-mnist}
OOD=$([ "$DS" = mnist ] && echo fashion-mnist || echo mnist)
OUT=benchmarks/results/bnn-$DS
mkdir -p "$OUT"
for lik in ${LIK:-ibp standard pgd}; do
  for m in ${METHODS:-bbb noisy-adam vogn swag hmc}; do
    name=bnn-$DS-$m-$lik
    [ -f "$OUT/$name.json" ] && continue
    [ -f "runs/$name/posterior.safetensors" ] || \
      certkit bayes train --config "configs/$name.toml" --out "runs/$name" --threads "${THREADS:-1}"
    certkit bayes eval --run "runs/$name" --count "$N" --eps 0.1 --ood "$OOD" --out "$OUT/$name.json" \
      --threads "${THREADS:-1}"
  done
done
python benchmarks/bayes_table.py "$OUT" | tee "$OUT/table.txt"
