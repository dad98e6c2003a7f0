# Cloud PACS — the two commands: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PACS_DATA_DIR ?= $(CURDIR)/var
# Test processes (pytest-xdist): three on a two-core machine, since the tests wait on DICOM peers,
# servers and browsers about as much as they compute. PYTEST_WORKERS=0 runs in one process.
PYTEST_WORKERS ?= 3
APPS := pacs_cloud archive worklist workflow viewer reports

.PHONY: setup run test lint bench clean

$(BIN)/.installed: requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

# OHIF v3, served at /ohif/: the build pinned in viewer/ohif/package.json (needs npm).
OHIF_DIST ?= viewer/ohif/dist
$(OHIF_DIST)/.installed: viewer/ohif/package.json viewer/ohif/install.sh
	OHIF_DIST_DIR=$(abspath $(OHIF_DIST)) viewer/ohif/install.sh
	touch $@

setup: $(BIN)/.installed $(OHIF_DIST)/.installed

## Set up, migrate, seed the demo and start every process of the product; one that dies is restarted (Ctrl-C stops all).
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
	STUDY_STABILITY_SECONDS=$${STUDY_STABILITY_SECONDS:-10} $(BIN)/python -m pacs_cloud.lib.supervisor Procfile

## Set up and run the whole test suite (PostgreSQL tests run when DATABASE_URL points at one).
test: setup
	PACS_DATA_DIR=$(PACS_DATA_DIR)/test $(BIN)/pytest --durations=15 $(if $(filter-out 0,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist loadfile)

## Linters and the type checker, as CI runs them.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	PACS_DATA_DIR=$(PACS_DATA_DIR)/lint $(BIN)/mypy $(APPS)

## The benchmarks beside Orthanc 1.10, one after another (hours; see the README's Performance section).
## Each writes its figures to bench/results/<name>.json; `make bench BENCHES="mwl workflow"` runs some.
BENCHES ?= archive mwl render report workflow edge dce volume onboarding
# PostgreSQL server for the scratch database (re-created before each benchmark: never a real one).
BENCH_SERVER ?= postgres://postgres@127.0.0.1:5432
BENCH_DB ?= pacs_bench
BENCH_HOME ?= $(CURDIR)/var/bench
# The Orthanc harness (orthanc_up.sh, orthanc_down.sh, make_series.py).
PEER_BENCH_DIR ?= /work/shared/bench
# Root installs packages directly; anyone else through sudo.
APT_GET = $(if $(filter 0,$(shell id -u)),,sudo )apt-get
BENCH_ENV = BENCH_HOME=$(BENCH_HOME) PEER_BENCH_DIR=$(PEER_BENCH_DIR) BENCH_SHARED=$(PEER_BENCH_DIR) TCP_NODELAY=1 \
	PACS_DATA_DIR=$(BENCH_HOME)/pacs-data BENCH_DATABASE_URL=$(BENCH_SERVER)/$(BENCH_DB)
FRESH_BENCH_DB = psql -q "$(BENCH_SERVER)/postgres" -c 'DROP DATABASE IF EXISTS "$(BENCH_DB)"' -c 'CREATE DATABASE "$(BENCH_DB)"'
bench_wanted = $(filter $(1),$(BENCHES))

bench: setup
	@# Orthanc with its DICOMweb and worklist plugins, and dcmtk, as the scripts expect.
	@command -v Orthanc >/dev/null 2>&1 && test -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so \
		&& command -v storescu >/dev/null 2>&1 \
		|| { $(APT_GET) update && $(APT_GET) install -y --no-install-recommends orthanc orthanc-dicomweb dcmtk; }
	@test -x $(PEER_BENCH_DIR)/orthanc_up.sh || { echo "No Orthanc harness in PEER_BENCH_DIR=$(PEER_BENCH_DIR)"; exit 1; }
	mkdir -p $(BENCH_HOME)
	$(if $(call bench_wanted,archive),$(FRESH_BENCH_DB) && $(BENCH_ENV) $(BIN)/python bench/archive_bench.py --database $(BENCH_SERVER)/$(BENCH_DB))
	$(if $(call bench_wanted,mwl),$(FRESH_BENCH_DB) && $(BENCH_ENV) DATABASE_URL=$(BENCH_SERVER)/$(BENCH_DB) $(BIN)/python bench/mwl_query.py)
	@# Rendering is measured on the embedded SQLite database, as the README's figures are.
	$(if $(call bench_wanted,render),$(BENCH_ENV) env -u DATABASE_URL $(BIN)/python bench/render_bench.py)
	$(if $(call bench_wanted,report),$(FRESH_BENCH_DB) && $(BENCH_ENV) $(BIN)/python bench/report_bench.py)
	$(if $(call bench_wanted,workflow),$(FRESH_BENCH_DB) && $(BENCH_ENV) $(BIN)/python bench/workflow_bench.py)
	$(if $(call bench_wanted,edge),$(FRESH_BENCH_DB) && $(BENCH_ENV) $(BIN)/python bench/edge_bench.py --database $(BENCH_SERVER)/$(BENCH_DB))
	$(if $(call bench_wanted,dce),$(BENCH_ENV) env -u DATABASE_URL $(BIN)/python bench/dce_bench.py)
	$(if $(call bench_wanted,volume),$(BENCH_ENV) env -u DATABASE_URL $(BIN)/python bench/volume_bench.py)
	$(if $(call bench_wanted,onboarding),$(FRESH_BENCH_DB) && $(BENCH_ENV) DATABASE_URL=$(BENCH_SERVER)/$(BENCH_DB) $(BIN)/python bench/onboarding_bench.py)
	@echo "Figures written to bench/results/; commit them and quote them in the README."

clean:
	rm -rf $(VENV) var staticfiles .pytest_cache .mypy_cache .ruff_cache
