# Every target builds .venv first when it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: setup demo docs test test-fast test-compat lint typecheck pytest bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ray-ft demo --verify

# docs/configuration.md from FTConfig's field docstrings (a test fails when it is stale)
docs: $(STAMP)
	$(BIN)/python -m ray_ft.tools.config_doc

lint: $(STAMP)
	$(BIN)/ruff check ray_ft tests bench
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy ray_ft

pytest: $(STAMP)
	$(BIN)/python -m pytest -q --durations=40

# lint and the type check (~25 s of one core) run beside the tests, whose first minute is
# the pure tests on one core; any of the three failing fails the target. Output is not
# synced (make would hold pytest's until it ends): their few lines may come between its.
test: $(STAMP)
	$(MAKE) --no-print-directory -j3 lint typecheck pytest

# the pure tests only (no Ray cluster): seconds, for everyday work
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not cluster"

# The compat lane: this checkout on another Ray release (make test-compat RAY=2.50.1), in a
# venv of its own. Ray first, then the project with its dependencies, as a user whose
# cluster pins that Ray installs ray_ft: pip must leave the Ray in place. Then the pure tests
# and the cluster tests of the Ray layer. CI runs it on the oldest supported release.
RAY ?= 2.44.1
COMPAT := .venv-ray-$(RAY)
COMPAT_TESTS := $(addprefix tests/cluster/test_,executor_basic.py executor_contract.py \
	ray_faults.py pool.py manager_actor.py elastic_ray.py client_libraries.py recovery.py)

test-compat:
	test -x $(COMPAT)/bin/python || $(PYTHON) -m venv $(COMPAT)
	$(COMPAT)/bin/python -m pip install --quiet --upgrade pip
	$(COMPAT)/bin/python -m pip install --quiet "ray[default]==$(RAY)"
	$(COMPAT)/bin/python -m pip install --quiet -e '.[test]'
	$(COMPAT)/bin/python -c "import ray, sys; print('compat lane: Ray', ray.__version__); \
		sys.exit(ray.__version__ != '$(RAY)')"
	$(COMPAT)/bin/python -m pytest -q -p no:cacheprovider -m "not cluster" \
		--ignore=tests/cluster/test_notebook.py
	$(COMPAT)/bin/python -m pytest -q -p no:cacheprovider --durations=10 $(COMPAT_TESTS)

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
