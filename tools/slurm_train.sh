#!/usr/bin/env bash
# Slurm training: slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [train.py args]
# Env: GPUS, GPUS_PER_NODE, CPUS_PER_TASK, SRUN_ARGS, PYTHON (see slurm_launch.sh).
exec bash "$(dirname "${BASH_SOURCE[0]}")/slurm_launch.sh" "$1" "$2" train.py "$3" \
    --work-dir="$4" "${@:5}"
