#!/usr/bin/env bash
# One command to install certkit into ./.venv and run something:
#   bash scripts/setup.sh demo    # install, then `certkit demo` (IBP training + certification on 8x8 digits)
#   bash scripts/setup.sh test    # install, then ruff and the test suite
# Torch is installed first and pinned (TORCH_SPEC overrides it), so pip never pulls another torch build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install --quiet --disable-pip-version-check "$TORCH_SPEC"
python -m pip install --quiet --disable-pip-version-check -e ".[test]"
case "${1:-demo}" in
  demo)
    shift || true
    certkit demo "$@"
    ;;
  test)
    shift || true
    if [ -z "${CERTKIT_DATA:-}" ] && [ -d ../shared/data ]; then
      export CERTKIT_DATA="$(cd ../shared/data && pwd)"
    fi
    ruff check src tests benchmarks
    python -m pytest -q "$@"
    ;;
  *)
    echo "usage: bash scripts/setup.sh [demo|test]" >&2
    exit 2
    ;;
esac
