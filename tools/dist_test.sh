#!/usr/bin/env bash
# Multi-process testing with torchrun: dist_test.sh CONFIG CHECKPOINT NPROC [test.py args]
# Env: NNODES (1), NODE_RANK (0), PORT (29500), MASTER_ADDR (127.0.0.1),
# PYTHON (default: the repo's .venv/bin/python if present, else python).
# Without a GPU the processes run on CPU with gloo (mmdsnet.utils.compat).
set -eo pipefail

if [ $# -lt 3 ]; then
    echo "usage: $0 CONFIG CHECKPOINT NPROC [test.py args...]" >&2
    exit 2
fi
CONFIG=$1
CHECKPOINT=$2
NPROC=$3
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}

TOOLS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$TOOLS_DIR")"
if [ -n "$PYTHON" ]; then
    PY="$PYTHON"
elif [ -x "$ROOT/.venv/bin/python" ]; then
    PY="$ROOT/.venv/bin/python"
else
    PY=python
fi

# On CPU-only machines share the cores between the processes (torchrun would
# otherwise use a single thread per process).
if [ -z "$OMP_NUM_THREADS" ] && \
        ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    CORES=$(nproc 2>/dev/null || echo 1)
    OMP_NUM_THREADS=$(( CORES / NPROC ))
    [ "$OMP_NUM_THREADS" -ge 1 ] || OMP_NUM_THREADS=1
    export OMP_NUM_THREADS
    export MKL_NUM_THREADS=${MKL_NUM_THREADS:-$OMP_NUM_THREADS}
fi

PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
"$PY" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --master_port="$PORT" \
    --nproc_per_node="$NPROC" \
    "$TOOLS_DIR/test.py" \
    "$CONFIG" \
    "$CHECKPOINT" \
    --launcher pytorch "${@:4}"
