# prunetune — `make demo` (set up + quick-start study), `make test` (set up + tests).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# Exact pin: where a local CPU wheel is on pip's find-links (this machine, CI) pip takes
# 2.13.0+cpu and no CUDA package; elsewhere the same pin resolves to PyPI's CUDA build.
TORCH  ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install demo test test-slow lint format bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("prunetune needs Python >= 3.11, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[dev,onnx]'
	@echo '$(CURDIR)' > $(STAMP)

# The stamp names the checkout the editable install points at: a moved or copied checkout
# (with its .venv) re-points it rather than testing the old folder's code.
install: $(STAMP)
	@grep -qxF '$(CURDIR)' $(STAMP) || { $(PIP) install -q --no-deps -e . && echo '$(CURDIR)' > $(STAMP); }

demo: install
	$(VENV)/bin/prunetune search studies/quickstart.yaml

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) mlruns mlartifacts mlflow.db optuna.db .pytest_cache
