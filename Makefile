# Both targets set up .venv first (idempotent: a second run only checks it).
# PYTHON: the interpreter that creates .venv (`make install PYTHON=python3.12`).
# MMDSNET_CLASSIFICATION=0 (environment) leaves out mmpretrain and torchvision (optional);
# MMCV_WHEEL_DIR: a folder of prebuilt mmcv wheels (docs/install.md).
# Everything else runs with PY, the .venv interpreter, whatever PYTHON is.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# detection (default), segmentation (`make demo TASK=seg`) or classification
# (`make demo TASK=cls`, needs mmpretrain)
TASK ?= det

.PHONY: install test demo lint gpu-check

install:
	PYTHON=$(PYTHON) bash tools/install/install_env.sh

test: install
	$(PY) -m pytest -q

# tools/demo/demo.sh and the launchers it calls read PYTHON as the interpreter to run:
# hand them the .venv one, not the one that created it.
demo: install
	PYTHON=$(abspath $(PY)) bash tools/demo/demo.sh $(TASK)

# ruff (pinned in requirements/constraints.txt), configured in pyproject.toml:
# lint rules and the formatter's check over the whole repo.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Check and measure a GPU machine in one command (docs/install-gpu.md): the
# gpu tests, the NCCL + AMP demo, the SDPA backends and attention kernels, the
# GPU benchmark suite and a profile, everything written to OUT. Offline: WHEELS=folder of wheels
# (e.g. ../shared/gpu-wheels), MMCV_WHEEL=prebuilt mmcv CUDA wheel (else mmcv is built
# from WHEELS/mmcv-2.1.0.tar.gz by tools/install/install_env.sh mmcv). It uses the machine's own torch:
# GPU_PYTHON (default: .venv's python if there is one, else python3). Without
# a GPU, or with CPU=1, it runs its CPU mode with tiny settings. BUDGET=seconds
# caps the whole run (each step gets at most what is left).
OUT ?= work_dirs/gpu-check/out
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	$(GPU_PYTHON) tools/gpu_check/gpu_check.py --out $(OUT) \
		$(if $(WHEELS),--wheels $(WHEELS)) $(if $(MMCV_WHEEL),--mmcv-wheel $(MMCV_WHEEL)) \
		$(if $(filter 1,$(CPU)),--cpu) $(if $(BUDGET),--budget $(BUDGET))
