#!/usr/bin/env bash
# The main job on embedded data (`make demo`, `make demo TASK=seg`):
# generate the synthetic dataset, train with tools/dist_train.sh on 2 CPU
# processes (or one process per GPU), evaluate with tools/test.py, and print
# the metrics with the loss curve summary.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TASK="${1:-det}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"

case "$TASK" in
    det) CONFIG=configs/demo/mask_rcnn_dsnet_t_dsfpn_demo.py ;;
    seg) CONFIG=configs/demo/fpn_dsnet-t_demo-seg.py ;;
    *) echo "usage: $0 [det|seg]" >&2; exit 2 ;;
esac
NAME="$(basename "$CONFIG" .py)"
WORK_DIR="${WORK_DIR:-work_dirs/$NAME}"
GPUS="$("$PY" -c 'import torch; print(torch.cuda.device_count())')"
NPROC="${NPROC:-$([ "$GPUS" -gt 0 ] && echo "$GPUS" || echo 2)}"

start=$(date +%s)
"$PY" tools/misc/make_demo_data.py --out data/demo
rm -rf "$WORK_DIR"
bash tools/dist_train.sh "$CONFIG" "$NPROC" --work-dir "$WORK_DIR"
trained=$(date +%s)
CKPT="$WORK_DIR/$(cat "$WORK_DIR/last_checkpoint" | xargs basename)"
"$PY" tools/test.py "$CONFIG" "$CKPT" --work-dir "$WORK_DIR/test" \
    --out "$WORK_DIR/test/results.pkl"
end=$(date +%s)
"$PY" tools/misc/demo_summary.py "$WORK_DIR" --task "$TASK" \
    --train-seconds $((trained - start)) --total-seconds $((end - start)) --nproc "$NPROC"
