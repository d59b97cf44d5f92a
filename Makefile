# Both targets set up .venv first (idempotent: a second run only checks it).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# detection (default) or segmentation: `make demo TASK=seg`
TASK ?= det

.PHONY: install test demo

install:
	PYTHON=$(PYTHON) bash tools/install_env.sh

test: install
	$(PY) -m pytest -q

demo: install
	bash tools/demo.sh $(TASK)
