#!/usr/bin/env bash
# The paper's evaluation for one model: the four QA sets, the Video-ChatGPT benchmark, then the report.
#   bash scripts/videopanda/eval/all.sh MODEL_DIR DATA_ROOT OUT_DIR
# Environment: as qa.sh. Report: OUT_DIR/report/report.md (+ qa.png, benchmark.png). Stops at the first failing step.
set -euo pipefail
source "$(dirname "$0")/common.sh"
if [[ $# -ne 3 ]]; then sed -n 2,4p "$0" >&2; exit 2; fi
require_benchmark "$2"
for dataset in msvd msrvtt tgif activitynet; do
    bash "$(dirname "$0")/qa.sh" "$1" "$dataset" "$2" "$3"
done
bash "$(dirname "$0")/benchmark.sh" "$1" "$2" "$3"
"$VIDEOPANDA" eval report --results "$3" --output-dir "$3/report" --plot
