# Both targets set up .venv first (idempotent: a second run only checks it).
# PYTHON: the interpreter that creates .venv (`make install PYTHON=python3.12`).
# Everything else runs with PY, the .venv interpreter, whatever PYTHON is.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# detection (default) or segmentation: `make demo TASK=seg`
TASK ?= det

.PHONY: install test demo lint

install:
	PYTHON=$(PYTHON) bash tools/install_env.sh

test: install
	$(PY) -m pytest -q

# tools/demo.sh and the launchers it calls read PYTHON as the interpreter to run:
# hand them the .venv one, not the one that created it.
demo: install
	PYTHON=$(abspath $(PY)) bash tools/demo.sh $(TASK)

# ruff (pinned in requirements/constraints.txt), configured in pyproject.toml:
# lint rules and the formatter's check over the whole repo.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
