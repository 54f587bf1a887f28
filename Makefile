# Two commands on a fresh machine: `make app` (clinician app on the default models) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8501

.PHONY: setup app api test lint test-all bundles bench

setup: $(VENV)/.installed

# torch is pinned to the local CPU build first; a bare `opacus` would pull a multi-GB CUDA torch.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[serve,report,test,hospital,federated,simulation]"
	# a venv built before rapidocr replaced it holds rapidocr-onnxruntime, whose requirements are unmet
	$(PY) -m pip uninstall -q -y rapidocr-onnxruntime 2>/dev/null || true
	$(PY) -m pip check
	touch $@

app: setup
	$(VENV)/bin/privmed app --port $(PORT)

api: setup
	$(VENV)/bin/privmed api --host 127.0.0.1 --port 8000

# lint first: ruff's rules are in pyproject.toml ([tool.ruff])
test: setup lint
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

# Rebuild the committed default bundles (epsilon = 2) with the project's own command.
bundles: setup
	bash benchmarks/train_defaults.sh
