#!/usr/bin/env bash
# Zero-shot QA on one dataset: one inference process per GPU (resumable), merge (checks every question
# is answered exactly once), then judge.
#   bash scripts/videopanda/eval/qa.sh MODEL_DIR {msvd|msrvtt|tgif|activitynet} DATA_ROOT OUT_DIR
# Environment: GPUS, BATCH_SIZE (1), MAX_NEW_TOKENS (1024), JUDGE (gpt|exact), JUDGE_MODEL (gpt-3.5-turbo), API_BASE, WORKERS,
# MAX_RETRIES, OPENAI_API_KEY (for JUDGE=gpt), ALLOW_INCOMPLETE (1: accept questions without an answer or verdict, counted as
# wrong). Results: OUT_DIR/DATASET/judge/results.json. Stops at the first failing step (exit code non-zero).
set -euo pipefail
source "$(dirname "$0")/common.sh"
if [[ $# -ne 4 ]]; then sed -n 2,7p "$0" >&2; exit 2; fi
MODEL="$1"; DATASET="$2"; DATA_ROOT="$3"; OUT="$4/$2"

run_chunks qa --model "$MODEL" --dataset "$DATASET" --data-root "$DATA_ROOT" --output-dir "$OUT/predictions" \
    --batch-size "${BATCH_SIZE:-1}" --max-new-tokens "${MAX_NEW_TOKENS:-1024}"
# shellcheck disable=SC2046
"$VIDEOPANDA" eval merge --pred-dir "$OUT/predictions" --dataset "$DATASET" --data-root "$DATA_ROOT" \
    --output "$OUT/merge.jsonl" $(allow_incomplete)
# shellcheck disable=SC2046
"$VIDEOPANDA" eval judge --pred-file "$OUT/merge.jsonl" --output-dir "$OUT/judge" --dataset "$DATASET" \
    --model "${JUDGE_MODEL:-gpt-3.5-turbo}" $(judge_args) $(allow_incomplete)
