# The two commands a fresh machine needs: `make demo` runs the system, `make test` runs every check.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: demo dev test lint unit bench bench-governor soak stop-stress chaos clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(INSTALLED)

demo: $(INSTALLED)
	$(BIN)/python scripts/demo.py

# A throwaway Redis, both daemons and .dev/p31.env for p31ctl, until Ctrl-C: the local walkthrough.
dev: $(INSTALLED)
	$(BIN)/python scripts/dev.py

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: $(INSTALLED)
	$(BIN)/pytest tests/unit -q

# Two workers, each taking whole files (their module fixtures, such as test_deploy_systemd.py's one VPS, are built
# once and their tests run in order): most tests wait on processes and timers, so two halve the wall time on two cores.
test: lint
	$(BIN)/pytest -q -n 2 --dist loadfile

bench: $(INSTALLED)
	$(BIN)/python scripts/bench_proposer.py

bench-governor: $(INSTALLED)
	$(BIN)/python scripts/bench_governor.py

# The governor's burst with 1-3 replicas and the proposer loop, on one Redis and on a three-master cluster, and what
# GOV_MIN_REPLICAS=1 adds to a permit's latency: ratios from one run (issue 14), about 4 minutes.
.PHONY: bench-topologies
bench-topologies: $(INSTALLED)
	$(BIN)/python scripts/bench_topologies.py

soak: $(INSTALLED)
	$(BIN)/python scripts/soak.py

stop-stress: $(INSTALLED)
	$(BIN)/python scripts/stop_stress.py $(STOP_STRESS_ARGS)

# One minute of faults on both daemons under load, every guarantee checked; e.g. CHAOS_ARGS="--minutes 30 --seed 7".
chaos: $(INSTALLED)
	$(BIN)/python scripts/chaos.py $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
