#!/usr/bin/env bash
# Launch one Video-Panda training stage under torchrun (used by prealign.sh / pretrain.sh / finetune.sh).
#
#   launch_stage.sh STAGE [--nnodes N] [--node-rank R] [--master-addr A] [--master-port P]
#                         [--gpus-per-node G] [--] [videopanda train options ...]
#
# Cluster settings come from flags or the environment: NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1),
# MASTER_PORT (29500), GPUS_PER_NODE (number of visible GPUs; processes per node, also on CPU).
# Paths: DATA_ROOT (SPEC layout: DATA_ROOT/train/train_json/*.json, videos under DATA_ROOT/train/),
# MODEL (initial folder), TEACHER (LanguageBind_Video_merge folder), OUTPUT_DIR, DEEPSPEED_CONFIG
# (configs/deepspeed/zero2.json). Every other option is passed to `videopanda train` and wins over
# these defaults (the last occurrence of an option counts). Inputs are checked in one process first.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
STAGE="${1:?usage: launch_stage.sh prealign|pretrain|finetune [options]}"
shift
case "$STAGE" in
  prealign) default_model="$REPO/checkpoints/EVE-7B-Pretrain-v1.0"; default_out="$REPO/checkpoints/videopanda_prealign" ;;
  pretrain) default_model="$REPO/checkpoints/videopanda_prealign"; default_out="$REPO/checkpoints/videopanda_pretrain" ;;
  finetune) default_model="$REPO/checkpoints/videopanda_pretrain"; default_out="$REPO/checkpoints/videopanda_finetune" ;;
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

PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
if [ -z "$GPUS_PER_NODE" ]; then
  GPUS_PER_NODE="$("$PYTHON" -c 'import torch; print(torch.cuda.device_count() or 1)')"
fi
WORLD_SIZE=$((NNODES * GPUS_PER_NODE))

args=(--stage "$STAGE"
      --model "${MODEL:-$default_model}"
      --output-dir "${OUTPUT_DIR:-$default_out}"
      --teacher "${TEACHER:-$REPO/checkpoints/LanguageBind_Video_merge}"
      --deepspeed "${DEEPSPEED_CONFIG:-$REPO/configs/deepspeed/zero2.json}")
if [ -n "${DATA_ROOT:-}" ]; then
  args+=(--data-root "$DATA_ROOT")
fi
args+=("${passthrough[@]}")

cd "$REPO"
# Wrong folders or data fail here, in one process, before any process group exists.
WORLD_SIZE="$WORLD_SIZE" "$PYTHON" -m videopanda.train "${args[@]}" --check-only

exec "$PYTHON" -m torch.distributed.run \
  --nnodes "$NNODES" --node_rank "$NODE_RANK" \
  --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
  --nproc_per_node "$GPUS_PER_NODE" \
  -m videopanda.train "${args[@]}"
