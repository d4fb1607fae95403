#!/usr/bin/env bash
# Video-Panda stage "pretrain" (the paper's training recipe) under torchrun; see launch_stage.sh for the settings
# (EXPERIMENT, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, GPUS_PER_NODE, DATA_ROOT, MODEL, TEACHER,
# OUTPUT_DIR, DEEPSPEED_CONFIG, SHUTDOWN_TIMEOUT) and TRAIN_AND_VALIDATE.md. Extra arguments (key.path=value
# overrides of the experiment, --resume, --check-only) go to `videopanda train`.
# Exit status 75: stopped by SIGTERM / SIGUSR1 after a complete checkpoint (run it again to resume).
exec bash "$(dirname "$0")/launch_stage.sh" pretrain "$@"
