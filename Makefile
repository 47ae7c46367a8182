# Every target builds .venv first when it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: setup demo test test-fast lint typecheck pytest bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ray-ft demo --verify

lint: $(STAMP)
	$(BIN)/ruff check ray_ft tests bench
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy ray_ft

pytest: $(STAMP)
	$(BIN)/python -m pytest -q --durations=40

test: lint typecheck pytest

# the pure tests only (no Ray cluster): seconds, for everyday work
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not cluster"

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
