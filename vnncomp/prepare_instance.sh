#!/usr/bin/env bash
# VNN-COMP tool interface: prepare one instance (untimed by the competition; nothing is cached between
# instances, so this only ends leftover runs and checks that the network and the property load).
#   prepare_instance.sh v1 BENCHMARK ONNX VNNLIB
set -euo pipefail
if [ "${1:-}" != "v1" ] || [ $# -ne 4 ]; then echo "usage: $0 v1 BENCHMARK ONNX VNNLIB" >&2; exit 1; fi
cd "$(dirname "$0")/.."
pkill -f "certkit verify" 2>/dev/null || true
.venv/bin/python - "$3" "$4" <<'PY'
import sys
from certkit.onnx_io import load_onnx
from certkit.verify.vnnlib import read_vnnlib
net = load_onnx(sys.argv[1])
props = read_vnnlib(sys.argv[2])
print(f"{sys.argv[1]}: input {tuple(net.input_shape)}; {sys.argv[2]}: {len(props)} input box(es)")
PY
