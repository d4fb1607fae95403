#!/usr/bin/env bash
# Zero-shot msvd QA: bash scripts/videopanda/eval/msvd.sh MODEL_DIR DATA_ROOT OUT_DIR (options: see qa.sh)
set -euo pipefail
if [[ $# -ne 3 ]]; then sed -n 2p "$0" >&2; exit 2; fi
exec bash "$(dirname "$0")/qa.sh" "$1" msvd "$2" "$3"
