# FleetWatch: `make demo` runs the main job, `make stack` starts the services, `make test` runs the tests; each installs on first use.
PYTHON ?= python3.11
# Test processes (pytest-xdist): the slow tests are mostly separate spark-submit JVMs, so two
# processes overlap them even on 2 cores.
TEST_WORKERS ?= 2
VENV := .venv
BIN := $(VENV)/bin
PYTEST := $(BIN)/pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=30
STAMP := $(VENV)/.installed

.PHONY: install demo stack stack-down test test-fast check-java clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found: FleetWatch needs Python 3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	@touch $(STAMP)

check-java:
	@command -v java >/dev/null || { echo "error: Java 17 or newer is needed by Spark and was not found: install OpenJDK 17 (apt-get install openjdk-17-jre-headless)"; exit 1; }

demo: install check-java
	$(BIN)/fleetwatch demo

# The multi-machine topology on this machine: Spark master and worker, MLflow server, Airflow on PostgreSQL
stack: install check-java
	$(BIN)/fleetwatch stack up

stack-down:
	$(BIN)/fleetwatch stack down

test: install check-java
	$(PYTEST)

test-fast: install check-java
	$(PYTEST) -m "not slow"

clean:
	rm -rf .fleetwatch .pytest_cache
