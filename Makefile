# Two entry points for a fresh clone: `make run` (the quick synthetic study) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test test-fast lint bench clean lock

# Every package, torch and peft included, comes pinned with its hashes from requirements.lock
# (regenerate it with `make lock`); the package itself is installed on top without dependencies.
$(BIN)/pacbayes: pyproject.toml requirements.lock
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $(BIN)/pacbayes

lock:
	$(BIN)/pip install -q pip-tools
	$(BIN)/pip-compile -q --generate-hashes --extra dev --extra torch --strip-extras \
	  --allow-unsafe -o requirements.lock pyproject.toml

run: $(BIN)/pacbayes
	$(BIN)/pacbayes lab --preset quick --out experiments/results/quick --figures figures

# Two pytest workers (pytest-xdist): the 2-core build machine runs a compile-bound test on each.
test: $(BIN)/pacbayes
	$(BIN)/python -m pytest -q -n 2

# Everything but the tests marked slow (subprocesses, two-process runs, torch parity).
test-fast: $(BIN)/pacbayes
	$(BIN)/python -m pytest -q -n 2 -m "not slow"

lint: $(BIN)/pacbayes
	$(BIN)/ruff check pacbayes tests experiments benchmarks

bench: $(BIN)/pacbayes
	for f in benchmarks/bench_*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
