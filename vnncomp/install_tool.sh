#!/usr/bin/env bash
# VNN-COMP tool interface: install certkit (run once, from this folder's repository).
#   install_tool.sh v1
# CPU instances get the CPU torch wheel; on a GPU instance set TORCH_SPEC to the CUDA build you want
# (e.g. TORCH_SPEC="torch==2.13.0" with pip's default index), the rest is the same.
set -euo pipefail
if [ "${1:-}" != "v1" ]; then echo "expected API version v1, got '${1:-}'" >&2; exit 1; fi
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check "$TORCH_SPEC"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[vnncomp]"
.venv/bin/certkit --version
