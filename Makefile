# Two entry points for a fresh clone: `make run` (the quick synthetic study) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench clean

$(BIN)/pacbayes: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/pacbayes

$(VENV)/.torch: $(BIN)/pacbayes
	$(BIN)/pip install -q 'torch==2.13.0' || echo "torch not installed: parity tests fall back to golden files"
	touch $(VENV)/.torch

run: $(BIN)/pacbayes
	$(BIN)/pacbayes lab --preset quick --out experiments/results/quick --figures figures

test: $(BIN)/pacbayes $(VENV)/.torch
	$(BIN)/python -m pytest -q

lint: $(BIN)/pacbayes
	$(BIN)/ruff check pacbayes tests experiments benchmarks

bench: $(BIN)/pacbayes
	for f in benchmarks/bench_*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
