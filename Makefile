# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv when missing and install the project (with its dev and rewards extras) into it.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Tests and demos never reach a model hub.
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1

.PHONY: demo test test-all lint bench clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e ".[dev,rewards]"
	touch $(STAMP)

demo: $(STAMP)
	$(OFFLINE) $(BIN)/slas demo

test: $(STAMP)
	$(OFFLINE) $(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(OFFLINE) $(BIN)/python -m pytest -q -m "slow or not slow"

lint: $(STAMP)
	$(BIN)/ruff check slas tests benchmarks examples

# Time every phase of a training step (world, tiny SD, tiny FLUX) -> docs/performance.md
bench: $(STAMP)
	$(OFFLINE) $(BIN)/python -m benchmarks.bench_step --out docs/performance.md --json benchmarks/results.json

clean-venv:
	rm -rf $(VENV)
