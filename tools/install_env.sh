#!/usr/bin/env bash
# Create .venv and install the tested OpenMMLab matrix plus mmdsnet (editable).
#
# Idempotent: a stamp in .venv records a hash of the inputs; a second run with
# the same inputs only checks the imports. mmcv 2.1.0 is installed from a
# prebuilt wheel when MMCV_WHEEL_DIR holds one whose Python tag matches and
# whose compiled ops load against the installed torch; otherwise it is built
# from source with its ops (about 35 minutes on 2 cores; pip caches the wheel).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3.11}"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
STAMP="$VENV/.mmdsnet-install-stamp"
MMCV_VERSION=2.1.0

command -v "$PYTHON" >/dev/null || PYTHON=python3
stamp_inputs() {
    cat requirements/*.txt setup.py tools/install_env.sh | sha256sum | cut -d' ' -f1
}

check_imports() {
    "$PY" - <<'EOF'
import mmcv, mmdet, mmengine, mmseg, torch
from mmcv.ops import nms, RoIAlign  # compiled ops must be present
import mmdsnet
print(f'torch {torch.__version__} | mmengine {mmengine.__version__} | '
      f'mmcv {mmcv.__version__} (ops) | mmdet {mmdet.__version__} | '
      f'mmseg {mmseg.__version__} | mmdsnet {mmdsnet.__version__}')
EOF
}

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$(stamp_inputs)" ]] && check_imports 2>/dev/null; then
    echo "[install] .venv is up to date"
    exit 0
fi

if [[ ! -x "$PY" ]]; then
    echo "[install] creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$PY" -m pip --disable-pip-version-check)

"${PIP[@]}" install -r requirements/build.txt
"${PIP[@]}" install -c requirements/constraints.txt -r requirements/runtime.txt -r requirements/tests.txt

mmcv_ops_ok() {
    "$PY" -c "import mmcv, torch; from mmcv.ops import nms; \
assert mmcv.__version__ == '$MMCV_VERSION'; \
nms(torch.rand(4, 4) * 10, torch.rand(4), 0.5)" 2>/dev/null
}

if mmcv_ops_ok; then
    echo "[install] mmcv $MMCV_VERSION with ops already installed"
else
    wheel=""
    if [[ -n "${MMCV_WHEEL_DIR:-}" && -d "$MMCV_WHEEL_DIR" ]]; then
        pytag="$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
        wheel="$(ls "$MMCV_WHEEL_DIR"/mmcv-$MMCV_VERSION-"$pytag"-*.whl 2>/dev/null | head -n1 || true)"
    fi
    if [[ -n "$wheel" ]]; then
        echo "[install] trying prebuilt $wheel"
        "${PIP[@]}" install --no-deps --force-reinstall "$wheel"
        if ! mmcv_ops_ok; then
            echo "[install] prebuilt mmcv does not load against this torch; building from source"
            "${PIP[@]}" uninstall -y mmcv
            wheel=""
        fi
    fi
    if [[ -z "$wheel" ]]; then
        echo "[install] building mmcv $MMCV_VERSION from source with ops (MAX_JOBS=${MAX_JOBS:-2})"
        MMCV_WITH_OPS=1 FORCE_CUDA="${FORCE_CUDA:-0}" MAX_JOBS="${MAX_JOBS:-2}" \
            "${PIP[@]}" install --no-build-isolation "mmcv==$MMCV_VERSION"
        mmcv_ops_ok || { echo "[install] mmcv ops failed to load after the build" >&2; exit 1; }
    fi
fi

"${PIP[@]}" install --no-deps --no-build-isolation -e .
check_imports
stamp_inputs > "$STAMP"
echo "[install] done"
