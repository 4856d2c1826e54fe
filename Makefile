# The README's commands. `make demo` installs netmamba and classifies the example capture with the
# built-in default model; `make test` installs the test extras and runs the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch; on other machines add
#   --index-url https://download.pytorch.org/whl/cpu
# to avoid a multi-GB CUDA download.
TORCH ?= torch==2.13.0

.PHONY: demo install install-test test lint bench clean

demo: install
	$(BIN)/netmamba classify examples/example.pcap

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e .

install-test: $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test]"

test: install-test
	$(BIN)/python -m pytest -q

bench: install-test
	$(BIN)/pip install --quiet -e ".[bench]"
	$(BIN)/python benchmarks/bench_prepare.py
	$(BIN)/python benchmarks/bench_models.py
	$(BIN)/python benchmarks/bench_serve.py

lint: install-test
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

clean:
	rm -rf $(VENV) build src/*.egg-info src/netmamba/_native_*.so .pytest_cache
