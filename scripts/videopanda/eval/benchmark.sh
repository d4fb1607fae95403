#!/usr/bin/env bash
# Video-ChatGPT benchmark: one inference process per GPU (resumable), then merge + five judge aspects.
#   bash scripts/videopanda/eval/benchmark.sh MODEL_DIR DATA_ROOT OUT_DIR
# Environment: as qa.sh. Results: OUT_DIR/benchmark/judge/results.json (five scores and their average).
# Stops at the first failing step; a DATA_ROOT without the benchmark files is one line naming the missing file.
set -euo pipefail
source "$(dirname "$0")/common.sh"
if [[ $# -ne 3 ]]; then sed -n 2,4p "$0" >&2; exit 2; fi
MODEL="$1"; DATA_ROOT="$2"; OUT="$3/benchmark"
require_benchmark "$DATA_ROOT"

run_chunks benchmark --stage infer --model "$MODEL" --data-root "$DATA_ROOT" --output-dir "$OUT" \
    --batch-size "${BATCH_SIZE:-1}" --max-new-tokens "${MAX_NEW_TOKENS:-1024}"
# shellcheck disable=SC2046
"$VIDEOPANDA" eval benchmark --stage judge --data-root "$DATA_ROOT" --output-dir "$OUT" \
    --judge-model "${JUDGE_MODEL:-gpt-3.5-turbo}" $(judge_args) $(allow_incomplete)
