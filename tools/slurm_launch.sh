#!/usr/bin/env bash
# Shared by slurm_train.sh and slurm_test.sh:
#   slurm_launch.sh PARTITION JOB_NAME SCRIPT [SCRIPT args]
# Env: GPUS (8, total tasks), GPUS_PER_NODE (8), CPUS_PER_TASK (5),
# SRUN_ARGS (extra srun options), PYTHON (interpreter, as in dist_launch.sh).
set -x

PARTITION=$1
JOB_NAME=$2
SCRIPT=$3
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}

TOOLS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$TOOLS_DIR")"
source "$TOOLS_DIR/python_env.sh"

# SRUN_ARGS is split into words on purpose (several srun options).
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
exec srun -p "$PARTITION" \
    --job-name="$JOB_NAME" \
    --gres=gpu:"$GPUS_PER_NODE" \
    --ntasks="$GPUS" \
    --ntasks-per-node="$GPUS_PER_NODE" \
    --cpus-per-task="$CPUS_PER_TASK" \
    --kill-on-bad-exit=1 \
    $SRUN_ARGS \
    "$PY" -u "$TOOLS_DIR/$SCRIPT" "${@:4}" --launcher=slurm
