#!/usr/bin/env bash
# The main job on embedded data (`make demo`, `make demo TASK=seg`, `make demo TASK=cls`):
#
#     tools/demo/demo.sh [det|seg|cls] [tools/train.py arguments, e.g. --amp --cfg-options k=v]
#
# generate the synthetic dataset (cls: the image-folder classification set; it
# needs mmpretrain), train with tools/dist_train.sh on 2 CPU processes (or one
# process per GPU), evaluate with tools/test.py drawing every validation image
# (ground truth beside prediction, or the classes and score), draw the training curves,
# and print the figures and where everything is (tools/demo/demo_summary.py).
#
# Each run gets its own work dir, work_dirs/<config>/<YYYYmmdd_HHMMSS>, with
# work_dirs/<config>/latest pointing at the newest: earlier runs are kept.
# The console shows progress; the config dump and other long output go to the
# log files only (tools/demo/demo_console.py).
#
# Env: PYTHON  interpreter that runs the demo (default: the repo's .venv; `make
#              demo` passes it, its own PYTHON only creates .venv)
#      NPROC   processes (default: one per GPU, else 2)
#      PORT    port of the process group (default on one node: a free one)
#      WORK_DIR a fresh work dir instead of the timestamped one (must not hold files)
# Exit code: 3 when the run ended but shows no learning (tools/demo/demo_summary.py).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
TASK="${1:-det}"
[ $# -gt 0 ] && shift  # the rest goes to tools/dist_train.sh (make gpu-check: --amp, --cfg-options)
PY="${PYTHON:-$ROOT/.venv/bin/python}"
# tools/dist_train.sh picks its interpreter from PYTHON too: the same one.
export PYTHON="$PY"
# Progress lines reach the console filter as they are written.
export PYTHONUNBUFFERED=1

case "$TASK" in
    det) CONFIG=configs/demo/mask_rcnn_dsnet_t_dsfpn_demo.py ;;
    seg) CONFIG=configs/demo/fpn_dsnet-t_demo-seg.py ;;
    cls) CONFIG=configs/demo/dsnet-t_demo-cls.py ;;
    *) echo "usage: $0 [det|seg|cls]" >&2; exit 2 ;;
esac
if ! "$PY" -c 'import torch, mmengine' 2>/dev/null; then
    echo "$PY cannot import torch and mmengine: run 'make install' first, or point PYTHON" \
        "at the interpreter of the environment that has them" >&2
    exit 2
fi
if [ "$TASK" = cls ] && ! "$PY" -c 'import mmpretrain' 2>/dev/null; then
    echo "mmpretrain is not installed (the classification demo needs it): run 'make install'," \
        "which installs it unless MMDSNET_CLASSIFICATION=0 (requirements/classification.txt)" >&2
    exit 2
fi
NAME="$(basename "$CONFIG" .py)"
RUNS="work_dirs/$NAME"
if [ -n "${WORK_DIR:-}" ]; then
    if [ -n "$(ls -A "$WORK_DIR" 2>/dev/null)" ]; then
        echo "WORK_DIR=$WORK_DIR already holds files; the demo never deletes results:" \
            "give a new WORK_DIR, or leave it unset for a timestamped one under $RUNS/" >&2
        exit 2
    fi
else
    STAMP="$(date +%Y%m%d_%H%M%S)"
    while [ -e "$RUNS/$STAMP" ]; do sleep 1; STAMP="$(date +%Y%m%d_%H%M%S)"; done
    WORK_DIR="$RUNS/$STAMP"
    EARLIER="$(find "$RUNS" -mindepth 1 -maxdepth 1 -type d -name '20*_*' 2>/dev/null \
        | sort || true)"
    mkdir -p "$WORK_DIR"
    ln -sfn "$STAMP" "$RUNS/latest"
    if [ -n "$EARLIER" ]; then
        echo "[demo] earlier runs are kept (delete them with rm -rf when no longer needed):"
        for run in $EARLIER; do echo "         $run ($(du -sh "$run" | cut -f1))"; done
    fi
fi
mkdir -p "$WORK_DIR"
WORK_DIR="$(cd "$WORK_DIR" && pwd)"
PRED_DIR="$WORK_DIR/pictures/predictions"
echo "[demo] this run: $WORK_DIR${STAMP:+ (also $RUNS/latest)}"
trap 'echo "[demo] failed; what this run wrote is in $WORK_DIR (see *_console.log)" >&2' ERR
# On one node the processes meet on a free port unless PORT is given: another
# training on this machine may hold torchrun's default 29500.
if [ "${NNODES:-1}" = 1 ] && [ -z "${PORT:-}" ]; then
    FREE_PORT='import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'
    PORT="$("$PY" -c "$FREE_PORT")"
    export PORT
fi
GPUS="$("$PY" -c 'import torch; print(torch.cuda.device_count())')"
NPROC="${NPROC:-$([ "$GPUS" -gt 0 ] && echo "$GPUS" || echo 2)}"

start=$(date +%s)
"$PY" tools/demo/make_demo_data.py --task "$TASK" --out data/demo
echo "[demo] training $CONFIG in $NPROC processes; console: progress only," \
    "everything in $WORK_DIR/train_console.log"
bash tools/dist_train.sh "$CONFIG" "$NPROC" --work-dir "$WORK_DIR" "$@" 2>&1 \
    | tee "$WORK_DIR/train_console.log" \
    | "$PY" tools/demo/demo_console.py --full-log "$WORK_DIR/train_console.log"
trained=$(date +%s)
CKPT="$WORK_DIR/$(xargs basename < "$WORK_DIR/last_checkpoint")"
# Test with the config as training used it (mmengine's copy in the work dir).
TRAINED_CONFIG="$WORK_DIR/$NAME.py"
[ -f "$TRAINED_CONFIG" ] || TRAINED_CONFIG="$CONFIG"
echo "[demo] testing $CKPT with tools/test.py; drawing every validation image"
"$PY" tools/test.py "$TRAINED_CONFIG" "$CKPT" --work-dir "$WORK_DIR/test" \
    --out "$WORK_DIR/test/results.pkl" --show-dir "$PRED_DIR" 2>&1 \
    | tee "$WORK_DIR/test_console.log" \
    | "$PY" tools/demo/demo_console.py --full-log "$WORK_DIR/test_console.log"
end=$(date +%s)
"$PY" tools/demo/demo_summary.py "$WORK_DIR" --task "$TASK" --pred-dir "$PRED_DIR" \
    --train-seconds $((trained - start)) --total-seconds $((end - start)) --nproc "$NPROC"
