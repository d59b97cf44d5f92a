#!/usr/bin/env bash
# Multi-process training: dist_train.sh CONFIG NPROC [train.py args]
# NCCL on GPUs; gloo with NPROC CPU processes on machines without one.
# Env: NNODES, NODE_RANK, PORT, MASTER_ADDR, PYTHON (see dist_launch.sh).
if [ $# -lt 2 ]; then
    echo "usage: $0 CONFIG NPROC [train.py args...]" >&2
    exit 2
fi
exec bash "$(dirname "${BASH_SOURCE[0]}")/dist_launch.sh" train.py "$2" "$1" "${@:3}"
