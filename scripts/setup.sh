#!/usr/bin/env bash
# One-time set-up of .venv at the repository root (idempotent).
# Installs the CPU torch wheel first so the package's torch>= range never pulls CUDA wheels,
# then the package with its test extras, then DeepSpeed (source-only, built against that torch).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PY=.venv/bin/python
stamp=.venv/.videopanda-setup
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
$PY -m pip install -q --upgrade pip setuptools wheel
if ! $PY -c "import torch" 2>/dev/null; then
  $PY -m pip install -q "torch==${TORCH_VERSION}"
fi
$PY -m pip install -q -e ".[test]"
if ! $PY -c "import deepspeed" 2>/dev/null; then
  DS_BUILD_OPS=0 $PY -m pip install -q --no-build-isolation deepspeed
fi
echo "$want" > "$stamp"
