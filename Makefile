# Quick start: `make demo` runs the pipeline end to end; `make test` runs the tests.
# Both create .venv and install what they need on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first, when the venv has none, so that the project's `torch>=2.6` does not
# pull whatever build is newest. On Linux, PyPI's torch wheels bring CUDA libraries (several GB);
# for a CPU-only machine pass the CPU index: make test TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# (our CI machines serve a local CPU wheel of this version, so they need neither).
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=
TORCH_PIP_ARGS := $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL),)

# No telemetry from the local Prefect server or MLflow; the demo and tests need no network.
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export MLFLOW_DISABLE_TELEMETRY ?= true
export DO_NOT_TRACK ?= 1
# Prefect's temporary local server may need longer than its 20 s default on a busy 2-core machine.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180

.PHONY: demo test lint bench-adbench bench-stream bench-train bench-keys bench-mnist bench-startup clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet $(TORCH_PIP_ARGS) "$(TORCH_SPEC)" \
		|| $(PY) -m pip install --quiet $(TORCH_PIP_ARGS) "torch>=2.6"
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
	$(PY) -m pip install --quiet -e ".[dev,bench]"
	$(PY) benchmarks/adbench_oneclass.py

# Streaming scoring vs a raw pyarrow read of the same generated file: SIZE_GB=4 for the real figure.
SIZE_GB ?= 0.25
bench-stream: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[dev,bench]"
	$(PY) benchmarks/streaming_score.py --size-gb $(SIZE_GB)

# Training and score_samples throughput vs PyOD's AutoEncoder (same network, batch size, epochs;
# a PyOD-style stand-in loop where PyOD is missing), fit vs loop time, n_estimators=5 vs 1.
bench-train: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[dev,bench]"
	$(PY) benchmarks/train_throughput.py

# Peak memory of duplicate-key detection at N and 4N distinct keys, bounded vs all in memory.
bench-keys: $(VENV)/.installed
	$(PY) benchmarks/key_index_memory.py

# Time to the first scored row and peak RSS of `anomaly score`, cold and warm model cache, as
# ratios to `python -c "import torch"` measured in the same run.
bench-startup: $(VENV)/.installed
	$(PY) benchmarks/startup.py

# One-class MNIST (10 digits x 3 seeds): conv autoencoder beside IsolationForest and a dense AE.
bench-mnist: $(VENV)/.installed
	nice -n 5 $(PY) benchmarks/mnist_oneclass.py

clean:
	rm -rf outputs mlruns mlartifacts mlflow.db data/*.parquet data/incoming data/series_incoming \
		data/images_train data/images_incoming
