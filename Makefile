# Cloud PACS — the two commands: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PACS_DATA_DIR ?= $(CURDIR)/var
# Test processes (pytest-xdist); 2 fits a two-core machine. PYTEST_WORKERS=0 runs in one process.
PYTEST_WORKERS ?= 2
APPS := pacs_cloud archive worklist workflow viewer reports

.PHONY: setup run test lint clean

$(BIN)/.installed: requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

setup: $(BIN)/.installed

## Set up, migrate, seed the demo and start every process of the product (Ctrl-C stops all).
run: setup
	$(BIN)/python manage.py migrate --noinput
	# An upgraded database may hold one Patient ID twice at a hospital (earlier releases); idempotent.
	$(BIN)/python manage.py merge_duplicate_patients
	# No web server runs yet to relay live pushes to.
	PUSH_RELAY_URL= $(BIN)/python manage.py seed_demo
	@echo
	@echo "Cloud PACS starts on http://127.0.0.1:8000/ (sign in with a login above). Ctrl-C stops everything."
	@echo
	# The demo treats a study as complete after seconds, not minutes, so it is routed at once.
	STUDY_STABILITY_SECONDS=$${STUDY_STABILITY_SECONDS:-10} $(BIN)/honcho --procfile Procfile start

## Set up and run the whole test suite (PostgreSQL tests run when DATABASE_URL points at one).
test: setup
	PACS_DATA_DIR=$(PACS_DATA_DIR)/test $(BIN)/pytest $(if $(filter-out 0,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist loadfile)

## Linters and the type checker, as CI runs them.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	PACS_DATA_DIR=$(PACS_DATA_DIR)/lint $(BIN)/mypy $(APPS)

clean:
	rm -rf $(VENV) var staticfiles .pytest_cache .mypy_cache .ruff_cache
