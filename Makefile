# Quick start: `make demo` runs the pipeline end to end; `make test` runs the tests.
# Both create .venv and install what they need on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
# A bare `torch` requirement pulls the newest build, which on Linux means several GB of CUDA
# packages. Pin the torch release to install when none is present (CPU or CUDA as pip picks).
TORCH_SPEC ?= torch==2.13.0

# No telemetry from the local Prefect server or MLflow; the demo and tests need no network.
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export MLFLOW_DISABLE_TELEMETRY ?= true
export DO_NOT_TRACK ?= 1

.PHONY: demo test lint bench-adbench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)" || $(PY) -m pip install --quiet "torch>=2.6"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(PY) -m flows.demo

test: $(VENV)/.installed
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check anomaly flows tests benchmarks data
	$(VENV)/bin/ruff format --check anomaly flows tests benchmarks data
	$(VENV)/bin/mypy anomaly

bench-adbench: $(VENV)/.installed
	$(PY) -m pip install --quiet ".[bench]"
	$(PY) benchmarks/adbench_oneclass.py

clean:
	rm -rf outputs mlruns mlartifacts mlflow.db data/*.parquet data/incoming
