# Two commands on a fresh machine: `make demo` and `make test` (see README.md).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.nbdeploy-installed
# pip's site configuration here names local index folders that may not exist; keep the
# output readable by dropping those warnings (errors still fail the step).
PIP := $(BIN)/python -m pip --disable-pip-version-check
QUIET_PIP := 2>&1 | { grep -v "^WARNING: Location" || true; }
DEMO_HOME := $(CURDIR)/.demo/home

.PHONY: help install demo test lint typecheck unit bench clean labextension wheel

help:
	@echo "make demo   set up .venv; run the example pipeline, deploy its model, serve requests"
	@echo "make test   set up .venv with test tools and run lint, types and the whole test suite"
	@echo "make bench  run the benchmarks in quick mode (installs wrk when run as root)"
	@echo "make wheel  build dist/nbdeploy-*.whl (the lab extension prebuilt) to install elsewhere"

install: $(STAMP)

$(STAMP): pyproject.toml
	@echo "==> setting up $(VENV) (first time: about 2 minutes)"
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip $(QUIET_PIP)
	HATCH_JUPYTER_BUILDER_SKIP_NPM=1 $(PIP) install --quiet -e '.[dev]' $(QUIET_PIP)
	$(BIN)/python -c "import nbdeploy, papermill, mlflow, ipykernel" 
	touch $@

# Node.js and npm from Debian's packages when they are missing and make runs as root;
# otherwise a message that says what to install. $(1): what needs them.
define ENSURE_NPM
	@if ! command -v npm >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "==> installing Node.js (Debian packages) for $(1)"; \
	    apt-get update -qq && apt-get install -y -qq nodejs npm; \
	  else \
	    echo "make: $(1) needs Node.js and npm; install them (Debian/Ubuntu: sudo apt-get install nodejs npm) and run make again" >&2; \
	    exit 1; \
	  fi; \
	fi
endef

# The JupyterLab extension (labextension/, TypeScript): its packages from the committed
# lockfile, then built into nbdeploy/labextension (the wheel ships that, prebuilt), and
# linked into the venv so that JupyterLab loads this checkout's build.
LABEXT_MODULES := labextension/node_modules/.installed
LABEXT_BUILD := nbdeploy/labextension/install.json
LABEXT_LINKED := $(VENV)/.nbdeploy-labextension
LABEXT_SOURCES := $(wildcard labextension/src/*.ts labextension/style/*.css labextension/style/*.js) \
	labextension/package.json labextension/tsconfig.json labextension/install.json

$(LABEXT_MODULES): labextension/package-lock.json
	$(call ENSURE_NPM,the JupyterLab extension build)
	cd labextension && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(LABEXT_BUILD): $(LABEXT_MODULES) $(LABEXT_SOURCES)
	@echo "==> building the JupyterLab extension (labextension/ -> nbdeploy/labextension)"
	cd labextension && npm run --silent build
	touch $@

$(LABEXT_LINKED): $(LABEXT_BUILD) $(STAMP)
	rm -rf $(VENV)/share/jupyter/labextensions/nbdeploy-labextension
	mkdir -p $(VENV)/share/jupyter/labextensions
	ln -s $(CURDIR)/nbdeploy/labextension $(VENV)/share/jupyter/labextensions/nbdeploy-labextension
	touch $@

labextension: $(LABEXT_LINKED)

# A wheel with the JupyterLab extension prebuilt (pip install dist/nbdeploy-*.whl needs no
# Node): what a user installs into their own environment.
wheel: $(STAMP) $(LABEXT_BUILD)
	rm -rf dist && mkdir -p dist
	$(BIN)/python -m pip wheel --no-deps --no-build-isolation --disable-pip-version-check \
	  --wheel-dir dist .
	@ls dist/nbdeploy-*.whl

demo: $(STAMP) $(LABEXT_LINKED)
	@echo "==> the example notebooks' parameters"
	$(BIN)/nbdeploy params example_notebooks/train.ipynb
	@echo
	@echo "==> a two-step pipeline: prepare data, then train (a second run reuses unchanged steps)"
	NBDEPLOY_HOME=$(DEMO_HOME) $(BIN)/nbdeploy run example_notebooks/pipeline.yaml
	@echo
	@echo "==> one run with a typed parameter"
	NBDEPLOY_HOME=$(DEMO_HOME) $(BIN)/nbdeploy run example_notebooks/train.ipynb -p n_estimators 120
	@echo
	@echo "==> the runs recorded in $(DEMO_HOME) (also in MLflow: $(DEMO_HOME)/mlflow.db)"
	NBDEPLOY_HOME=$(DEMO_HOME) $(BIN)/nbdeploy runs --limit 5
	@echo
	@echo "==> deploy the notebook's predict function as a service on 127.0.0.1"
	NBDEPLOY_HOME=$(DEMO_HOME) $(BIN)/nbdeploy deploy example_notebooks/train.ipynb --reference X_train
	@echo
	@echo "==> requests served"
	NBDEPLOY_HOME=$(DEMO_HOME) $(BIN)/python example_notebooks/call_service.py predict 20
	@echo
	@echo "==> status, then stop (nbdeploy stop predict)"
	NBDEPLOY_HOME=$(DEMO_HOME) $(BIN)/nbdeploy status
	@echo
	@echo "==> metrics from the request log: traffic, latency, input quality, drift against X_train"
	NBDEPLOY_HOME=$(DEMO_HOME) $(BIN)/nbdeploy metrics predict --window 10m
	NBDEPLOY_HOME=$(DEMO_HOME) $(BIN)/nbdeploy report predict -o $(DEMO_HOME)/predict-report.html
	NBDEPLOY_HOME=$(DEMO_HOME) $(BIN)/nbdeploy stop predict
	NBDEPLOY_HOME=$(DEMO_HOME) $(BIN)/nbdeploy daemon stop

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest -m "not integration"

# tests/test_k8s.py checks custom resources (Argo Rollouts, Istio, Gateway API) against
# their CRD schemas with Node (tests/k8s/package-lock.json pins them).
K8S_SCHEMAS := tests/k8s/node_modules/.installed

$(K8S_SCHEMAS): tests/k8s/package-lock.json
	$(call ENSURE_NPM,the Kubernetes schema checks)
	cd tests/k8s && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# tests/test_browser.py opens JupyterLab in Debian's Chromium through Playwright (the Python
# package is in the dev extra; Playwright's own browser download is never used). Installed
# here when running as root; elsewhere the browser tests are skipped (and fail when CI is set).
BROWSER := $(VENV)/.nbdeploy-browser

$(BROWSER): $(STAMP)
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "==> installing Chromium and fonts (Debian packages) for the browser tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-liberation; \
	  else \
	    echo "make test: the browser tests need Chromium: sudo apt-get install chromium fonts-liberation (skipped without it)" >&2; \
	    exit 0; \
	  fi; \
	fi; \
	touch $@

# tests/test_image.py builds and runs images with a real Docker engine: tests/docker/engine.sh
# finds one, or (as root) installs Debian's docker.io and starts a private dockerd, and makes
# a base image with python3 from Debian's packages (no registry is reachable from CI).
ENGINE := tests/docker/engine.sh
BASE_IMAGE := nbdeploy-test/python3:bookworm

test: lint typecheck $(K8S_SCHEMAS) $(BROWSER) $(LABEXT_LINKED)
	engine=$$(NBDEPLOY_BASE_IMAGE=$(BASE_IMAGE) $(ENGINE)); \
	export $$engine NBDEPLOY_TEST_BASE_IMAGE=$(BASE_IMAGE); \
	$(BIN)/python -m pytest -n 2 --dist loadfile

# bench/monitor.py compares drift with Evidently's, run in an environment of its own
# (Evidently 0.7 pins plotly < 6 and needs pandas < 3, older than nbdeploy's).
EVIDENTLY_VENV := bench/.venv-evidently
EVIDENTLY := $(EVIDENTLY_VENV)/.installed

$(EVIDENTLY):
	@echo "==> setting up $(EVIDENTLY_VENV) (Evidently, for bench/monitor.py)"
	$(PYTHON) -m venv $(EVIDENTLY_VENV)
	$(EVIDENTLY_VENV)/bin/python -m pip install --quiet --disable-pip-version-check 'evidently>=0.7,<0.8' 'pandas<3' $(QUIET_PIP)
	touch $@

# bench/serve.py and bench/rollout.py load servers with wrk: Debian's package, installed
# here when running as root; otherwise the message names the command to run.
bench: $(STAMP) $(EVIDENTLY)
	@if ! command -v wrk >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "==> installing wrk (Debian package) for bench/serve.py"; \
	    apt-get update -qq && apt-get install -y -qq wrk; \
	  else \
	    echo "make bench: bench/serve.py needs wrk; install it (Debian/Ubuntu: sudo apt-get install wrk) and run make bench again" >&2; \
	    exit 1; \
	  fi; \
	fi
	$(BIN)/python bench/pipeline.py --quick
	$(BIN)/python bench/serve.py --quick
	$(BIN)/python bench/capture.py --quick
	$(BIN)/python bench/rollout.py --quick
	$(BIN)/python bench/chaos.py --quick
	$(BIN)/python bench/monitor.py --quick
	$(BIN)/python bench/lab.py --quick
	$(BIN)/python bench/batch.py --quick
	engine=$$(NBDEPLOY_BASE_IMAGE=$(BASE_IMAGE) $(ENGINE)); \
	if [ -z "$$engine" ]; then echo "make bench: bench/image.py needs a Docker engine (run as root, or set DOCKER_HOST)" >&2; exit 1; fi; \
	export $$engine NBDEPLOY_BENCH_BASE_IMAGE=$(BASE_IMAGE); \
	$(BIN)/python bench/image.py --quick

clean:
	rm -rf .demo build dist .mypy_cache .ruff_cache .pytest_cache example_notebooks/data \
	  nbdeploy/labextension labextension/lib labextension/tsconfig.tsbuildinfo
