#!/usr/bin/env bash
# Launch one Video-Panda training stage under torchrun (used by prealign.sh / pretrain.sh / finetune.sh).
#
#   launch_stage.sh STAGE [--nnodes N] [--node-rank R] [--master-addr A] [--master-port P]
#                         [--gpus-per-node G] [--] [videopanda train options ...]
#
# Cluster settings come from flags or the environment: NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1),
# MASTER_PORT (29500), GPUS_PER_NODE (number of visible GPUs; processes per node, also on CPU).
# The run: EXPERIMENT (an experiment file or a name under configs/experiments, default videopanda-7b) holds
# every setting; the stage starts from the run's previous stage folder and writes run_dir/STAGE (run_dir:
# checkpoints/<experiment name> unless the experiment says otherwise). Optional environment overrides:
# DATA_ROOT (data.root), MODEL (the stage's starting folder, stages.STAGE.init), TEACHER (model.teacher), OUTPUT_DIR
# (stages.STAGE.output_dir), DEEPSPEED_CONFIG (training.deepspeed), each passed on as that `key=value` override.
# Every other argument goes to `videopanda train`: `key.path=value` overrides, --resume, --check-only. Inputs are
# checked in one process first.
# The run happens in the current working directory: relative data, model and run folders are taken from there.
# PYTHON: the interpreter (default: the checkout's .venv/bin/python when there is one, else python3 on PATH).
#
# Preemption: SIGTERM or SIGUSR1 to this script or to the workers themselves, or SIGTERM to torchrun
# (torchrun ignores SIGUSR1), makes every rank finish its optimizer step and save a complete checkpoint;
# this script then exits with status 75 ("preempted, checkpoint saved": run the same command again to
# resume) whatever torchrun itself reports. A signal during the last step lets the run finish: status 0.
# SHUTDOWN_TIMEOUT (600) is how long torchrun waits for its workers after it got SIGTERM before it kills
# them: keep it above one step plus one checkpoint save. Exit status otherwise: torchrun's.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
STAGE="${1:?usage: launch_stage.sh prealign|pretrain|finetune [options]}"
shift
case "$STAGE" in
  prealign|pretrain|finetune) ;;
  *) echo "launch_stage.sh: unknown stage '$STAGE' (prealign, pretrain, finetune)" >&2; exit 2 ;;
esac

NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
GPUS_PER_NODE="${GPUS_PER_NODE:-}"
passthrough=()
while [ $# -gt 0 ]; do
  case "$1" in
    --nnodes) NNODES="$2"; shift 2 ;;
    --node-rank) NODE_RANK="$2"; shift 2 ;;
    --master-addr) MASTER_ADDR="$2"; shift 2 ;;
    --master-port) MASTER_PORT="$2"; shift 2 ;;
    --gpus-per-node) GPUS_PER_NODE="$2"; shift 2 ;;
    --) shift; passthrough+=("$@"); break ;;
    *) passthrough+=("$1"); shift ;;
  esac
done

if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  [ ! -x "$HERE/../../.venv/bin/python" ] || PYTHON="$HERE/../../.venv/bin/python"
fi
if [ -z "$GPUS_PER_NODE" ]; then
  GPUS_PER_NODE="$("$PYTHON" -c 'import torch; print(torch.cuda.device_count() or 1)')"
fi
WORLD_SIZE=$((NNODES * GPUS_PER_NODE))

args=(--stage "$STAGE" --experiment "${EXPERIMENT:-videopanda-7b}")
[ -z "${MODEL:-}" ] || args+=("stages.$STAGE.init=$MODEL")
[ -z "${OUTPUT_DIR:-}" ] || args+=("stages.$STAGE.output_dir=$OUTPUT_DIR")
[ -z "${TEACHER:-}" ] || args+=("model.teacher=$TEACHER")
[ -z "${DEEPSPEED_CONFIG:-}" ] || args+=("training.deepspeed=$DEEPSPEED_CONFIG")
[ -z "${DATA_ROOT:-}" ] || args+=("data.root=$DATA_ROOT")
args+=("${passthrough[@]}")

# Wrong folders or data fail here, in one process, before any process group exists.
WORLD_SIZE="$WORLD_SIZE" "$PYTHON" -m videopanda.train "${args[@]}" --check-only

PREEMPTED=75  # videopanda.train.checkpointing.PREEMPTED_EXIT_CODE
# Local rank 0 writes a line here when the run stopped on a signal with a complete checkpoint ("preempted
# ...") or finished ("finished ..."): torchrun itself exits 1 then when its workers "failed" with 75 or
# it was signalled itself.
export VIDEOPANDA_PREEMPT_FILE
VIDEOPANDA_PREEMPT_FILE="$(mktemp "${TMPDIR:-/tmp}/videopanda-preempt.XXXXXX")"
trap 'rm -f "$VIDEOPANDA_PREEMPT_FILE"' EXIT
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT="${SHUTDOWN_TIMEOUT:-600}"

# torchrun ignores SIGUSR1 (it would die of it); the workers handle both signals.
( trap '' USR1; exec "$PYTHON" -m torch.distributed.run \
    --nnodes "$NNODES" --node_rank "$NODE_RANK" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
    --nproc_per_node "$GPUS_PER_NODE" \
    -m videopanda.train "${args[@]}" ) &
torchrun_pid=$!
signalled=""
forward() {  # a signal that reached this script goes on to the workers (torchrun's children)
  signalled=1
  pkill "-$1" -P "$torchrun_pid" 2>/dev/null || true
}
trap 'forward TERM' TERM
trap 'forward USR1' USR1
while :; do
  signalled=""
  status=0
  wait "$torchrun_pid" || status=$?
  [ -z "$signalled" ] && break  # else `wait` was cut short by a trapped signal: wait again
done
ending="$(cat "$VIDEOPANDA_PREEMPT_FILE")"
case "$ending" in
  preempted*) echo "launch_stage.sh: $STAGE $ending" >&2; exit "$PREEMPTED" ;;
  finished*) [ "$status" -eq 0 ] || echo "launch_stage.sh: $STAGE $ending" >&2; exit 0 ;;
esac
exit "$status"
