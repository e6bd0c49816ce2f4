# pixelwatch — every target sets up what it needs (virtual environment, dependencies, broker).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "pixelwatch needs Python 3.11+")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "installing pixelwatch with the train and dev extras (torch is large; pip caches it)…"
	$(BIN)/python -m pip install --quiet -e '.[train,dev]'
	@touch $@

venv: $(STAMP) ## create .venv and install pixelwatch with all extras

prereqs: ## check (and on Debian as root, install) Java 17+ and Maven for the local Kafka broker
	@bash deploy/prereqs.sh

prometheus: ## check (and on Debian as root, install) Prometheus and promtool for the alert tests
	@bash deploy/prometheus-setup.sh

browser: ## check (and on Debian as root, install) chromium and chromedriver for the page's browser tests
	@bash deploy/browser-setup.sh

examples: ## check (and on Debian as root, install) kcat and a JDK for the producer examples' tests; Go must be on PATH
	@bash deploy/examples-setup.sh

jaeger: ## build Jaeger (Go module proxy, deploy/jaeger/go.mod) into the cache for the tracing tests; Go must be on PATH
	@bash deploy/jaeger-setup.sh

podman: ## check (and on Debian as root, install) podman, buildah, runc and debootstrap for the image
	@bash deploy/podman-setup.sh

image: podman ## build the worker image with podman, no registry needed (IMAGE_TARGET=trainer|model; PYTHON_IMAGE=base)
	bash deploy/image.sh $(or $(IMAGE_TARGET),worker)

demo: venv prereqs ## live demo: local Kafka, train the seed model, stream images, show anomalies
	$(BIN)/pixelwatch demo

lint: venv ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv ## mypy (strict)
	$(BIN)/mypy

test: venv prereqs prometheus browser podman examples jaeger lint typecheck ## every test, lint and type check (starts its own Kafka broker)
	$(BIN)/python -m pytest

eval-digits: venv ## AUROC of every architecture and the defaults vs PCA / IsolationForest / kNN on scikit-learn digits (see docs/benchmarks.md; DIGITS_ARGS=... passes options)
	$(BIN)/python -m model_export.digits --out $(or $(DIGITS_OUT),artifacts/eval-digits) $(DIGITS_ARGS)

bench: venv prereqs jaeger ## benchmark the worker against the pipeline's limits (minutes; bench-results/; BENCH_ONLY=a,b runs some, BENCH_OUT=file)
	PYTHONPATH=tests $(BIN)/python -m benchmarks.bench $(if $(BENCH_OUT),--out $(BENCH_OUT))

chaos: venv prereqs ## fault suite in both processing guarantees: kill -9, SIGTERM, broker kill, rebalance, poison, fuzz, undeliverable output (~20 min; chaos-results/)
	$(BIN)/python tests/chaos/suite.py

broker: venv prereqs ## run a local Kafka broker on port 9092 until Ctrl-C
	$(BIN)/pixelwatch broker

dashboard: venv ## regenerate deploy/grafana/dashboards/pixelwatch.json from deploy/grafana/dashboard.py
	$(BIN)/python deploy/grafana/dashboard.py

screenshot: venv prereqs browser ## regenerate docs/anomaly-page.png, the picture of the page in the README and the docs, with its browser test
	@mkdir -p docs
	PIXELWATCH_SCREENSHOT=docs/anomaly-page.png $(BIN)/python -m pytest -q \
	  tests/test_web_browser.py::test_the_page_shows_exactly_the_flagged_images_and_a_new_one_arrives_without_reload

prometheusrule: venv ## regenerate deploy/k8s/prometheusrule.yaml from deploy/prometheus/alerts.yml
	$(BIN)/python deploy/prometheus/prometheusrule.py

schemas: venv ## regenerate deploy/schemas/*.json from the pydantic models
	$(BIN)/python -m service.schemas deploy/schemas

reference: venv ## regenerate docs/reference/*.md (CLI, settings, messages) and the code blocks of docs/examples.md
	$(BIN)/python docs/generate.py

plots: venv ## render docs/plots/*.png from bench-results/bench.json, chaos-results/chaos.json and artifacts/eval-digits/results.json (BENCH=, CHAOS=, DIGITS= pick other files)
	$(BIN)/python docs/plots.py $(if $(BENCH),--bench $(BENCH)) $(if $(CHAOS),--chaos $(CHAOS)) $(if $(DIGITS),--digits $(DIGITS))

docs: venv ## build the documentation site, strict (a broken link or anchor fails), into build/site
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir build/site

docs-serve: venv ## serve the documentation site on http://127.0.0.1:8000/, rebuilt on every change
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

clean: ## remove generated models, caches and local broker data (keeps .venv)
	rm -rf artifacts .kafka .pixelwatch .pytest_cache .mypy_cache .ruff_cache chaos-results build-results dist

.PHONY: help venv prereqs prometheus browser podman examples jaeger image screenshot demo lint typecheck test eval-digits bench chaos broker dashboard prometheusrule schemas reference plots docs docs-serve clean
