#!/usr/bin/env bash
#SBATCH --job-name=videopanda-train
#SBATCH --nodes=16
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --time=72:00:00
#SBATCH --signal=B:USR1@600
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/videopanda-train-%j.out
# All three stages of one experiment on a SLURM allocation: one srun task per node, each running torchrun
# with GPUS_PER_NODE processes. The run folder is the experiment's (checkpoints/<experiment name>, or RUN_DIR),
# one subfolder per stage, each storing the experiment that made it. A stage whose folder already holds
# training_complete.json is skipped, an interrupted one resumes from its latest complete checkpoint, so
# re-submitting (or --requeue after a preemption) continues where the job stopped; a stage folder made by
# another experiment is refused, never skipped or resumed.
#
# Time limit and preemption: SLURM sends SIGUSR1 to this batch shell 600 s before the time limit
# (--signal=B:USR1@600); this script passes it (and a SIGTERM it receives) on to the running stage's
# processes, which finish their optimizer step, save a complete checkpoint and exit with status 75
# (launch_stage.sh). The job is then requeued (scontrol requeue) and resumes from that checkpoint; no
# further stage starts once a stop was asked for. Raise 600 if one step plus one checkpoint save takes
# longer on your file system.
#
#   EXPERIMENT=videopanda-7b/no-lste DATA_ROOT=/data/videopanda sbatch scripts/videopanda/slurm_train_all.sh \
#       [key.path=value overrides (or --resume), for every stage]
#
# Settings (environment): DATA_ROOT (required), EXPERIMENT (videopanda-7b; a file or a name under
# configs/experiments), RUN_DIR (the experiment's run_dir), EVE_MODEL (the experiment's model.base), TEACHER
# (its model.teacher), DEEPSPEED_CONFIG (its training.deepspeed), GPUS_PER_NODE (4), MASTER_PORT (29500).
set -euo pipefail
REPO="${SLURM_SUBMIT_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}"
cd "$REPO"
mkdir -p logs
: "${DATA_ROOT:?set DATA_ROOT to the folder holding train/train_json and the videos}"
export DATA_ROOT
export EXPERIMENT="${EXPERIMENT:-videopanda-7b}"
[ -z "${TEACHER:-}" ] || export TEACHER
[ -z "${DEEPSPEED_CONFIG:-}" ] || export DEEPSPEED_CONFIG
export GPUS_PER_NODE="${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-4}}"
export NNODES="${SLURM_JOB_NUM_NODES:-1}"
export MASTER_ADDR="${MASTER_ADDR:-$(scontrol show hostnames "${SLURM_JOB_NODELIST:-localhost}" | head -n 1)}"
export MASTER_PORT="${MASTER_PORT:-29500}"
unset MODEL OUTPUT_DIR  # the stages chain through the experiment's run folder
run_settings=()
[ -z "${RUN_DIR:-}" ] || run_settings+=("run_dir=$RUN_DIR")
[ -z "${EVE_MODEL:-}" ] || run_settings+=("model.base=$EVE_MODEL")

PREEMPTED=75  # launch_stage.sh: stopped on a signal with a complete checkpoint
stop_asked=""
interrupted=""
ask_to_stop() {  # $1: the signal; every job step (not this batch shell) gets it
  stop_asked=1
  interrupted=1
  echo "=== SIG$1: asking the running stage to save a checkpoint and stop"
  scancel --signal="$1" "$SLURM_JOB_ID" || true
}
trap 'ask_to_stop USR1' USR1
trap 'ask_to_stop TERM' TERM

requeue() {
  echo "=== stopped with a checkpoint: requeueing job $SLURM_JOB_ID to resume"
  scontrol requeue "$SLURM_JOB_ID" || echo "=== scontrol requeue failed: re-submit this script to resume"
  exit "$PREEMPTED"
}

run_stage() {  # stage, extra arguments...
  local stage="$1" status=0 pid
  shift
  [ -z "$stop_asked" ] || requeue
  echo "=== $EXPERIMENT: $stage ($NNODES nodes x $GPUS_PER_NODE processes, master $MASTER_ADDR:$MASTER_PORT)"
  # One task per node; SLURM_NODEID is that node's rank. Variables are expanded on the node. srun runs in
  # the background: a shell runs its traps only between commands, `wait` lets it run them at once.
  srun --nodes="$NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1 \
    bash -c 'NODE_RANK=$SLURM_NODEID exec bash scripts/videopanda/'"$stage"'.sh "$@"' _ "$@" &
  pid=$!
  while :; do
    interrupted=""
    status=0
    wait "$pid" || status=$?
    [ -z "$interrupted" ] && break  # else a trapped signal cut `wait` short: wait for srun again
  done
  if [ "$status" -eq "$PREEMPTED" ] || { [ -n "$stop_asked" ] && [ "$status" -ne 0 ]; }; then
    requeue
  fi
  [ "$status" -eq 0 ] || { echo "=== $stage failed (exit status $status)"; exit "$status"; }
}

for stage in prealign pretrain finetune; do
  run_stage "$stage" "${run_settings[@]}" "$@"
done
echo "=== done: experiment $EXPERIMENT"
