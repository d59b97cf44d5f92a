#!/usr/bin/env bash
# Slurm testing: slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [test.py args]
# Env: GPUS, GPUS_PER_NODE, CPUS_PER_TASK, SRUN_ARGS, PYTHON (see slurm_launch.sh).
exec bash "$(dirname "${BASH_SOURCE[0]}")/slurm_launch.sh" "$1" "$2" test.py "$3" "$4" "${@:5}"
