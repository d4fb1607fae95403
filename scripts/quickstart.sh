#!/usr/bin/env bash
# The README's main command: synthetic video-QA data -> prealign -> pretrain -> finetune (torchrun,
# 2 processes, DeepSpeed ZeRO-2 on CPU) -> evaluation with the exact-match judge, on a 2-core CPU.
# Writes outputs/quickstart-seed0/{summary.json, loss_curves.png, results.md, logs/} (data in data/synth-seed0).
#
#   bash scripts/quickstart.sh                                  # the full model
#   QUICKSTART_ABLATION=no-lste-no-gstra bash scripts/quickstart.sh   # -> outputs/quickstart-seed0_no-lste-no-gstra
#   bash scripts/quickstart.sh --help                           # every option
# Set-up, then `videopanda quickstart` in the repository root (the same command works from any folder once
# the package is installed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/videopanda quickstart "$@"
