#!/usr/bin/env bash
# One-time set-up of .venv-lmms, lmms-eval's own environment with this package in it (idempotent).
# lmms-eval pins versions ours does not fit (av<16, wandb==0.25.0, ...), so it gets a venv of its own.
# The CPU torch wheel goes in first, as in scripts/setup.sh, and stays pinned while pip resolves the rest,
# so lmms-eval's torch and torchvision requirements never pull CUDA wheels; then this package with its
# `lmms` extra (lmms-eval itself), editable, so the venv runs this checkout's code.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
VENV=${LMMS_VENV:-.venv-lmms}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PY=$VENV/bin/python
stamp=$VENV/.videopanda-setup
want="$(cat pyproject.toml scripts/setup_lmms_eval.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
$PY -m pip install -q --upgrade pip setuptools wheel
if ! $PY -c "import torch" 2>/dev/null; then
  $PY -m pip install -q "torch==${TORCH_VERSION}"
fi
pinned="$(mktemp)"
trap 'rm -f "$pinned"' EXIT
# lmms-eval 0.7.3 imports filelock._api, which filelock 4 no longer has, without saying so in its requirements
printf 'torch==%s\nfilelock<4\n' "$($PY -c 'import torch; print(torch.__version__)')" > "$pinned"
$PY -m pip install -q -c "$pinned" -e ".[lmms]"
# PyPI's torchvision wheels are CUDA builds whose operators cannot load against the CPU torch, and an
# installed torchvision that cannot load breaks transformers' video processors; lmms-eval's core never
# imports it (only other models' back ends do), so it goes.
$PY -m pip uninstall -q -y torchvision
# lmms-eval's wandb==0.25.0 holds protobuf below 7, and sentencepiece's model proto cannot be read with that
# runtime, so a released folder's tokenizer.model would not load; protobuf goes back to 7 (pip reports the
# conflict with wandb; lmms-eval then logs that wandb reporting is unavailable, and runs).
$PY -m pip install -q "protobuf>=7"
$PY -c "import lmms_eval.models, videopanda.lmms_eval_plugin.model
from transformers.convert_slow_tokenizer import import_protobuf
import_protobuf()  # reads SentencePiece's model proto, as loading a tokenizer.model does"
echo "$want" > "$stamp"
