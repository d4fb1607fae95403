# Shared by the eval launchers (sourced, not run): the `videopanda` command and the GPU list.
# Every launcher runs with `set -euo pipefail`: the first failing step (an inference process, an incomplete
# merge, a judge with failed items) stops it with that step's exit code.
# VIDEOPANDA: command to run (default: the repository's .venv/bin/videopanda, else `videopanda` on PATH).
# GPUS: comma-separated GPU ids, one inference process each (default: every GPU nvidia-smi lists; none -> one CPU process).
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
if [[ -z "${VIDEOPANDA:-}" ]]; then
    if [[ -x "$REPO_ROOT/.venv/bin/videopanda" ]]; then VIDEOPANDA="$REPO_ROOT/.venv/bin/videopanda"; else VIDEOPANDA=videopanda; fi
fi
if [[ -z "${GPUS:-}" ]] && command -v nvidia-smi >/dev/null 2>&1; then
    GPUS="$(nvidia-smi --query-gpu=index --format=csv,noheader | paste -sd, -)"
fi
IFS=',' read -r -a GPU_LIST <<< "${GPUS:-cpu}"
NUM_CHUNKS="${#GPU_LIST[@]}"

# run_chunks ARGS...: one `videopanda eval ARGS --num-chunks N --chunk-idx I` per GPU, in parallel; fails if any fails.
run_chunks() {
    local pids=() idx
    for idx in "${!GPU_LIST[@]}"; do
        if [[ "${GPU_LIST[$idx]}" == cpu ]]; then
            "$VIDEOPANDA" eval "$@" --device cpu --num-chunks "$NUM_CHUNKS" --chunk-idx "$idx" &
        else
            CUDA_VISIBLE_DEVICES="${GPU_LIST[$idx]}" "$VIDEOPANDA" eval "$@" --num-chunks "$NUM_CHUNKS" --chunk-idx "$idx" &
        fi
        pids+=($!)
    done
    local failed=0 pid
    for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
    if (( failed )); then
        echo "videopanda eval $1: an inference process failed (its error is above); after fixing it, the same command answers only what is missing" >&2
        return 1
    fi
}

# allow_incomplete: --allow-incomplete when ALLOW_INCOMPLETE=1 (merge and judge then accept questions without an
# answer or a verdict, counted as wrong); by default any such question stops the launcher with an error.
allow_incomplete() {
    if [[ "${ALLOW_INCOMPLETE:-0}" == 1 ]]; then echo --allow-incomplete; fi
}

# judge_args: judge options from the environment (JUDGE=gpt|exact, JUDGE_MODEL, API_BASE, WORKERS, MAX_RETRIES).
judge_args() {
    local args=(--judge "${JUDGE:-gpt}")
    [[ -n "${API_BASE:-}" ]] && args+=(--api-base "$API_BASE")
    [[ -n "${WORKERS:-}" ]] && args+=(--workers "$WORKERS")
    [[ -n "${MAX_RETRIES:-}" ]] && args+=(--max-retries "$MAX_RETRIES")
    echo "${args[@]}"
}

# require_benchmark DATA_ROOT: exit with one line naming the first missing Video-ChatGPT benchmark file.
require_benchmark() {
    local dir="$1/eval/Video_ChatGPT_Benchmark" file
    for file in generic_qa.json temporal_qa.json consistency_qa.json; do
        if [[ ! -f "$dir/$file" ]]; then
            echo "$dir/$file not found: $1 has no Video-ChatGPT benchmark (generic_qa.json, temporal_qa.json, consistency_qa.json, videos/)" >&2
            exit 1
        fi
    done
}
