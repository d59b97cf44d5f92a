#!/usr/bin/env bash
# Multi-process testing: dist_test.sh CONFIG CHECKPOINT NPROC [test.py args]
# Env: NNODES, NODE_RANK, PORT, MASTER_ADDR, PYTHON (see dist_launch.sh).
if [ $# -lt 3 ]; then
    echo "usage: $0 CONFIG CHECKPOINT NPROC [test.py args...]" >&2
    exit 2
fi
exec bash "$(dirname "${BASH_SOURCE[0]}")/dist_launch.sh" test.py "$3" "$1" "$2" "${@:4}"
