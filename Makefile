# Cloud PACS — the two commands: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PACS_DATA_DIR ?= $(CURDIR)/var

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
	$(BIN)/python manage.py seed_demo
	# The demo treats a study as complete after seconds, not minutes, so it is routed at once.
	STUDY_STABILITY_SECONDS=$${STUDY_STABILITY_SECONDS:-10} $(BIN)/honcho --procfile Procfile start

## Set up and run the whole test suite.
test: setup
	PACS_DATA_DIR=$(PACS_DATA_DIR)/test $(BIN)/pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) var staticfiles .pytest_cache
