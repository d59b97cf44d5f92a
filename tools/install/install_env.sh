#!/usr/bin/env bash
# Create .venv and install the tested OpenMMLab matrix plus mmdsnet (editable).
#
# Idempotent: a stamp in .venv records a hash of the inputs; a second run with
# the same inputs only checks the imports (and, where torch sees a GPU, that
# mmcv's CUDA ops run). mmcv 2.1.0 is built with its compiled ops, from its
# sdist with tools/install/mmcv-2.1.0-cxx-std.patch applied (C++ standard from
# torch's version: c++20 for torch >= 2.13, c++17 before):
#
# CPU torch, or CUDA torch that sees no GPU: mmcv is installed from a prebuilt
#   wheel when MMCV_WHEEL_DIR holds one whose Python tag matches and whose ops
#   load against the installed torch, tried in this order:
#   MMCV_WHEEL_DIR/torch-<torch's version without its local tag, e.g. 2.14.1>/
#   (wheels built against that torch), then MMCV_WHEEL_DIR itself; otherwise it
#   is built from source (about 35-45 minutes on 2 cores).
# CUDA torch that sees a GPU (or FORCE_CUDA=1): mmcv is built from source with
#   its CUDA ops. tools/install/cuda_build_env.py decides and checks first: nvcc of
#   torch's CUDA major version, found the way torch finds it (CUDA_HOME, else
#   nvcc on PATH, else /usr/local/cuda), or else installed from the package
#   index into .venv with a CUDA_HOME assembled in .venv/cuda
#   (MMDSNET_PROVISION_CUDA=0 forbids that); compute capabilities that nvcc
#   supports; a host compiler nvcc accepts. It stops with exit code 2 and the
#   cause otherwise. TORCH_CUDA_ARCH_LIST defaults to the visible GPUs'
#   capabilities, without a GPU to a list for torch's CUDA version (printed),
#   and MAX_JOBS to min(cores, available GiB / 2.5); values you set are kept,
#   as is CC (the host compiler). After the build, nms and RoIAlign run on the
#   GPU and are compared with the CPU kernels. To build CPU-only ops on a GPU
#   machine, hide the GPUs: CUDA_VISIBLE_DEVICES= .
#
# Classification (mmpretrain, an optional dependency of mmdsnet): requirements/classification.txt
#   (torchvision and mmpretrain) is installed too unless MMDSNET_CLASSIFICATION=0, which installs
#   everything else (an mmpretrain already installed is kept). With USE_SYSTEM_TORCH=1 the
#   torchvision pin is never applied, so that pip cannot replace the system torch: a torchvision
#   installed beside it is kept and mmpretrain is installed, pinned to the installed torch and
#   torchvision; without a torchvision there, or when the index (or PIP_FIND_LINKS) has no
#   mmpretrain, classification is skipped with a note and the install goes on.
#
# Machines with a preinstalled CUDA torch and no package index:
#   USE_SYSTEM_TORCH=1  create .venv with --system-site-packages and keep the
#                       torch found there: the torch pins and
#                       requirements/constraints.txt are not applied (packages
#                       already installed are kept when they satisfy
#                       requirements/*.txt).
#   PIP_NO_INDEX=1 PIP_FIND_LINKS=/dir/of/wheels  (pip's own variables) install
#                       from a local directory; it must hold everything
#                       requirements/*.txt needs that is not installed yet, and
#                       mmcv-2.1.0.tar.gz, which is built from there (and the
#                       NVIDIA packages, if nvcc is to be provisioned).
#   e.g. USE_SYSTEM_TORCH=1 PIP_NO_INDEX=1 PIP_FIND_LINKS=/opt/wheels PYTHON=python3 make test
#
# install_env.sh mmcv: only mmcv (the decision, the patched sdist, the check above), for the
#   interpreter PYTHON as it is: no venv, no requirements, no mmdsnet, no stamp. The caller
#   provides the build's setuptools < 81; pip's own PIP_TARGET and PIP_UPGRADE=1 put mmcv into a
#   folder (make gpu-check's offline source build: PIP_NO_INDEX=1 PIP_FIND_LINKS=wheels).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
ONLY="${1:-}"
case "$ONLY" in
    "" | mmcv) ;;
    *) echo "usage: $0 [mmcv]" >&2; exit 2 ;;
esac
PYTHON="${PYTHON:-python3.11}"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
STAMP="$VENV/.mmdsnet-install-stamp"
MMCV_VERSION=2.1.0
BUILD_ENV=tools/install/cuda_build_env.py
BUILD_PLAN=tools/install/mmcv_build_plan.py
MMCV_PATCH=tools/install/mmcv-$MMCV_VERSION-cxx-std.patch

CLASSIFICATION="${MMDSNET_CLASSIFICATION:-1}"
case "$CLASSIFICATION" in
    0 | 1) ;;
    *) echo "[install] error: MMDSNET_CLASSIFICATION=$CLASSIFICATION; expected 1 (install" \
        "mmpretrain, the default) or 0 (leave it out)" >&2; exit 2 ;;
esac

command -v "$PYTHON" >/dev/null || PYTHON=python3
if [[ "$ONLY" == mmcv ]]; then PY="$PYTHON"; fi
# requirements/*.txt includes classification.txt; the opt-out changes what is installed too.
stamp_inputs() {
    {
        cat requirements/*.txt setup.py tools/install/install_env.sh "$BUILD_ENV" "$BUILD_PLAN" \
            "$MMCV_PATCH"
        echo "MMDSNET_CLASSIFICATION=$CLASSIFICATION"
    } | sha256sum | cut -d' ' -f1
}

# "<python tag> <torch version without its local tag> <torchvision version, or - if none>" of
# PY, e.g. "cp311 2.14.1 0.29.1".
probe_python() {
    "$PY" -c 'import importlib.metadata as md, sys
def version(name):
    try:
        return md.version(name).split("+")[0]
    except md.PackageNotFoundError:
        return "-"
print(f"cp{sys.version_info[0]}{sys.version_info[1]}", version("torch"), version("torchvision"))'
}

check_imports() {
    PYTHONPATH="$ROOT/tools/install${PYTHONPATH:+:$PYTHONPATH}" "$PY" - <<'EOF'
import mmcv, mmdet, mmengine, mmseg, torch
from mmcv.ops import nms, RoIAlign  # compiled ops must be present
import importlib.util
import mmdsnet
if importlib.util.find_spec('mmpretrain') is None:
    mmpretrain = 'not installed (optional)'
else:  # installed: it must import (torchvision.ops included)
    import mmpretrain
    mmpretrain = mmpretrain.__version__
print(f'torch {torch.__version__} | mmengine {mmengine.__version__} | '
      f'mmcv {mmcv.__version__} (ops) | mmdet {mmdet.__version__} | '
      f'mmseg {mmseg.__version__} | mmpretrain {mmpretrain} | mmdsnet {mmdsnet.__version__}')
if torch.version.cuda is not None and torch.cuda.is_available():
    from cuda_build_env import verify_ops  # a GPU is visible: mmcv's CUDA ops must run too
    print(verify_ops('cuda'))
EOF
}

if [[ -z "$ONLY" && -f "$STAMP" && "$(cat "$STAMP")" == "$(stamp_inputs)" ]] &&
    check_imports 2>/dev/null; then
    echo "[install] .venv is up to date"
    exit 0
fi

PIP=("$PY" -m pip --disable-pip-version-check)

# Temporary folders of this run (the mmcv sdist and build tree, filtered requirements): removed
# on every exit, a failure or an interrupt included. Add one with TEMP_DIRS+=("$dir").
TEMP_DIRS=()
remove_temp_dirs() { rm -rf ${TEMP_DIRS[@]+"${TEMP_DIRS[@]}"}; }
trap remove_temp_dirs EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The venv and what requirements/*.txt lists (not for `install_env.sh mmcv`).
install_requirements() {
    local system_torch="${USE_SYSTEM_TORCH:-0}" venv_args=() f
    [[ "$system_torch" == 1 ]] && venv_args=(--system-site-packages)
    if [[ ! -x "$PY" ]]; then
        echo "[install] creating $VENV with $PYTHON${venv_args[*]+ ${venv_args[*]}}"
        "$PYTHON" -m venv ${venv_args[@]+"${venv_args[@]}"} "$VENV"
    fi
    if [[ "$system_torch" == 1 ]] &&
        ! grep -qiE '^include-system-site-packages *= *true' "$VENV/pyvenv.cfg"; then
        echo "[install] error: USE_SYSTEM_TORCH=1 but $VENV was created without" \
            "--system-site-packages; remove it and run again" >&2
        exit 2
    fi
    "${PIP[@]}" install -r requirements/build.txt
    if [[ "$system_torch" == 1 ]]; then
        reqs="$(mktemp -d)"
        TEMP_DIRS+=("$reqs")
        for f in runtime tests; do
            grep -viE '^torch([<>=!~ ;[]|$)' "requirements/$f.txt" > "$reqs/$f.txt" || true
        done
        echo "[install] USE_SYSTEM_TORCH=1: keeping the installed torch; constraints not applied"
        "${PIP[@]}" install -r "$reqs/runtime.txt" -r "$reqs/tests.txt"
        [[ "$CLASSIFICATION" == 0 ]] || install_classification_beside_system_torch "$reqs"
    else
        local classification=()
        [[ "$CLASSIFICATION" == 1 ]] && classification=(-r requirements/classification.txt)
        "${PIP[@]}" install -c requirements/constraints.txt -r requirements/runtime.txt \
            -r requirements/tests.txt ${classification[@]+"${classification[@]}"}
    fi
    [[ "$CLASSIFICATION" == 1 ]] ||
        echo "[install] MMDSNET_CLASSIFICATION=0: mmpretrain and torchvision left out"
}

# USE_SYSTEM_TORCH=1: mmpretrain beside the system torch and a torchvision installed with it,
# both pinned to what is installed; skipped (with the reason) rather than replacing them.
install_classification_beside_system_torch() {
    local reqs="$1" torch_version torchvision
    read -r _ torch_version torchvision < <(probe_python)
    if [[ "$torchvision" == - ]]; then
        echo "[install] classification skipped: no torchvision beside the system torch" \
            "$torch_version (one from the index could replace it); install the torchvision" \
            "built for it and run again, or set MMDSNET_CLASSIFICATION=0"
        return
    fi
    grep -viE '^torchvision([<>=!~ ;[]|$)' requirements/classification.txt \
        > "$reqs/classification.txt" || true
    printf 'torch==%s\ntorchvision==%s\n' "$torch_version" "$torchvision" > "$reqs/installed.txt"
    if ! "${PIP[@]}" install -c "$reqs/installed.txt" -r "$reqs/classification.txt"; then
        echo "[install] classification skipped: mmpretrain could not be installed beside" \
            "torch $torch_version and torchvision $torchvision (see pip's message above)"
    fi
}
[[ -n "$ONLY" ]] || install_requirements

# cpu, cuda or provision, with the build variables; exit 2 if a CUDA build cannot succeed.
plan_mmcv_build() {
    local build_env
    build_env="$("$PY" "$BUILD_ENV")" || {
        echo "[install] stopped before building mmcv (see the error above)" >&2
        exit 2
    }
    eval "$build_env"
}
plan_mmcv_build
if [[ "$MMDSNET_MMCV_BUILD" == provision && "$ONLY" == mmcv ]]; then
    echo "[install] error: install_env.sh mmcv builds with an installed nvcc only (it has no" \
        "venv to provision one into): install a CUDA toolkit of torch's CUDA major version" >&2
    exit 2
elif [[ "$MMDSNET_MMCV_BUILD" == provision ]]; then
    # No nvcc of torch's CUDA major version: install torch's CUDA compiler and headers from
    # the package index and assemble a CUDA_HOME from them in the venv, then plan again
    # (without provisioning, so that a compiler that still does not fit stops with the cause).
    # shellcheck disable=SC2086  # a list of requirements
    "${PIP[@]}" install $MMDSNET_CUDA_PACKAGES
    CUDA_HOME="$("$PY" "$BUILD_ENV" --assemble-cuda-home "$VENV/cuda")"
    export CUDA_HOME
    echo "[install] CUDA_HOME=$CUDA_HOME (nvcc and headers from the package index)"
    MMDSNET_PROVISION_CUDA=0 plan_mmcv_build
fi
export MMCV_CXX_STD

# Build and install mmcv from its sdist with tools/install/mmcv-2.1.0-cxx-std.patch applied (the
# C++ standard comes from MMCV_CXX_STD, chosen from torch's version). The build's variables
# (MMCV_WITH_OPS, FORCE_CUDA, TORCH_CUDA_ARCH_LIST, MAX_JOBS, CUDA_HOME) come from the caller.
build_mmcv() {
    local src
    command -v patch >/dev/null || {
        echo "[install] error: \`patch\` is not installed; mmcv's sdist is patched before" \
            "the build (apt-get install patch, dnf install patch)" >&2
        exit 2
    }
    src="$(mktemp -d)"
    TEMP_DIRS+=("$src")
    "${PIP[@]}" download --no-deps --no-binary mmcv --no-build-isolation -d "$src" \
        "mmcv==$MMCV_VERSION"
    tar -xzf "$src/mmcv-$MMCV_VERSION.tar.gz" -C "$src"
    patch -d "$src/mmcv-$MMCV_VERSION" -p1 --forward <"$MMCV_PATCH" || {
        echo "[install] error: $MMCV_PATCH does not apply to mmcv $MMCV_VERSION's sdist" >&2
        exit 1
    }
    echo "[install] building mmcv $MMCV_VERSION with -std=$MMCV_CXX_STD"
    "${PIP[@]}" install --no-build-isolation --no-deps "$src/mmcv-$MMCV_VERSION"
    rm -rf "$src"
}

mmcv_ops_ok() {
    "$PY" -c "import mmcv, torch; from mmcv.ops import nms; \
assert mmcv.__version__ == '$MMCV_VERSION'; \
nms(torch.rand(4, 4) * 10, torch.rand(4), 0.5)" 2>/dev/null
}

# The prebuilt mmcv wheels of MMCV_WHEEL_DIR for PY, one a line, in the order to try: those
# built against the installed torch's version (the torch-<version>/ subfolder), then the
# top-level ones.
prebuilt_mmcv_wheels() {
    local pytag torch_version w
    [[ -n "${MMCV_WHEEL_DIR:-}" && -d "$MMCV_WHEEL_DIR" ]] || return 0
    read -r pytag torch_version _ < <(probe_python)
    for w in "$MMCV_WHEEL_DIR/torch-$torch_version"/mmcv-$MMCV_VERSION-"$pytag"-*.whl \
        "$MMCV_WHEEL_DIR"/mmcv-$MMCV_VERSION-"$pytag"-*.whl; do
        [[ -f "$w" ]] && echo "$w"
    done
    return 0
}

if [[ "$MMDSNET_MMCV_BUILD" == cuda ]]; then
    if "$PY" "$BUILD_ENV" --verify-ops cuda --expect-mmcv "$MMCV_VERSION" >/dev/null 2>&1; then
        echo "[install] mmcv $MMCV_VERSION with CUDA ops already installed"
    else
        # An installed mmcv without CUDA ops satisfies pip's requirement: remove it first.
        "${PIP[@]}" uninstall -y mmcv >/dev/null 2>&1 || true
        echo "[install] building mmcv $MMCV_VERSION from source with CUDA ops" \
            "(TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, MAX_JOBS=$MAX_JOBS)"
        started=$SECONDS
        build_mmcv
        took=$((SECONDS - started))
        echo "[install] mmcv build took $((took / 60)) min $((took % 60)) s"
    fi
    "$PY" "$BUILD_ENV" --verify-ops cuda --expect-mmcv "$MMCV_VERSION" || {
        echo "[install] mmcv's CUDA ops do not work (see above)" >&2
        exit 1
    }
elif mmcv_ops_ok; then
    echo "[install] mmcv $MMCV_VERSION with ops already installed"
else
    wheel="" candidates=()
    mapfile -t candidates < <(prebuilt_mmcv_wheels)
    for candidate in ${candidates[@]+"${candidates[@]}"}; do
        echo "[install] trying prebuilt $candidate"
        "${PIP[@]}" install --no-deps --force-reinstall "$candidate"
        if mmcv_ops_ok; then
            wheel="$candidate"
            break
        fi
        echo "[install] prebuilt $candidate does not load against this torch"
        "${PIP[@]}" uninstall -y mmcv
    done
    if [[ -z "$wheel" ]]; then
        echo "[install] building mmcv $MMCV_VERSION from source with ops (MAX_JOBS=${MAX_JOBS:-2})"
        MMCV_WITH_OPS=1 FORCE_CUDA="${FORCE_CUDA:-0}" MAX_JOBS="${MAX_JOBS:-2}" build_mmcv
        mmcv_ops_ok || { echo "[install] mmcv ops failed to load after the build" >&2; exit 1; }
    fi
fi

if [[ "$ONLY" == mmcv ]]; then
    echo "[install] mmcv $MMCV_VERSION done"
    exit 0
fi
"${PIP[@]}" install --no-deps --no-build-isolation -e .
check_imports
stamp_inputs > "$STAMP"
echo "[install] done"
