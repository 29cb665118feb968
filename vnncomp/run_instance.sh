#!/usr/bin/env bash
# VNN-COMP tool interface: decide one instance and write the result file (sat with its counterexample,
# unsat, timeout, unknown or error). The timeout counts from the start, loading included.
#   run_instance.sh v1 BENCHMARK ONNX VNNLIB RESULT_FILE TIMEOUT
# The GPU is used when torch sees one (CERTKIT_DEVICE overrides: cpu or cuda).
set -uo pipefail
if [ "${1:-}" != "v1" ] || [ $# -ne 6 ]; then echo "usage: $0 v1 BENCHMARK ONNX VNNLIB RESULT_FILE TIMEOUT" >&2; exit 1; fi
cd "$(dirname "$0")/.."
DEVICE=${CERTKIT_DEVICE:-$(.venv/bin/python -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")}
# a margin of a few seconds for the interpreter's start and the result file, within the competition's limit
BUDGET=$(.venv/bin/python -c "print(max(float('$6') - 3.0, 1.0))")
if ! .venv/bin/certkit verify "$3" "$4" --timeout "$BUDGET" --device "$DEVICE" --out "$5"; then
  echo "error" > "$5"
fi
