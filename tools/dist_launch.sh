#!/usr/bin/env bash
# Shared by dist_train.sh and dist_test.sh: dist_launch.sh SCRIPT NPROC [SCRIPT args]
# runs tools/SCRIPT in NPROC processes per node with torchrun (--launcher pytorch).
# Env: NNODES (1), NODE_RANK (0), PORT (29500), MASTER_ADDR (127.0.0.1),
# PYTHON (default: the repo's .venv/bin/python if present, else python).
# Without a GPU the processes run on CPU with gloo (mmdsnet/engine/cpu_distributed.py)
# and share the cores through OMP_NUM_THREADS (cores / NPROC, at least 1).
set -eo pipefail

SCRIPT=$1
NPROC=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}

TOOLS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$TOOLS_DIR")"
source "$TOOLS_DIR/python_env.sh"

if [ -z "$OMP_NUM_THREADS" ] && \
        ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    OMP_NUM_THREADS=$(( $(nproc 2>/dev/null || echo 1) / NPROC ))
    [ "$OMP_NUM_THREADS" -ge 1 ] || OMP_NUM_THREADS=1
    export OMP_NUM_THREADS
    export MKL_NUM_THREADS=${MKL_NUM_THREADS:-$OMP_NUM_THREADS}
fi

PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
exec "$PY" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --master_port="$PORT" \
    --nproc_per_node="$NPROC" \
    "$TOOLS_DIR/$SCRIPT" "${@:3}" --launcher pytorch
