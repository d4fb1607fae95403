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
# The demo's browser test drives Debian's Chromium through its chromedriver (tests/serve/test_demo.py).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "installing chromium and chromium-driver for the demo's browser test" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
      || echo "warning: apt-get could not install chromium chromium-driver; the demo's browser test cannot run" >&2
  else
    echo "warning: no chromium/chromedriver and no root apt-get here; the demo's browser test will be skipped" >&2
  fi
fi
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
# DeepSpeed's torch comm backend JIT-compiles its shared-memory op (deepspeed_shm_comm) on a machine's
# first run (about a minute on 2 cores, cached in torch's extension folder); build it once here, through the
# very function the backend calls, so the first training run or test does not pay it inside its timeout.
echo "building DeepSpeed's shared-memory comm op (about a minute the first time)" >&2
$PY -c "from deepspeed.comm.torch import build_shm_op; build_shm_op()" >/dev/null \
  || echo "warning: DeepSpeed's shm comm op did not build here; the first DeepSpeed run will try again" >&2
echo "$want" > "$stamp"
