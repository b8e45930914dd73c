# `make up` and `make test` do all set-up themselves; the venv lives in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DATASET_DIR := /usr/share/datasets/fashion-mnist
PG_VERSION = $(shell ls /etc/postgresql 2>/dev/null | head -n 1)

.PHONY: setup dataset up test test-browser docker-test lint format postgres bench clean

setup: $(STAMP) dataset

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[tensorflow,jax,dev]'
	touch $(STAMP)

# Debian's dataset-fashion-mnist; elsewhere the loader falls back to FASHION_MNIST_DIR or Keras's cache.
dataset:
	@if [ ! -f $(DATASET_DIR)/train-images-idx3-ubyte.gz ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    (apt-get install -y -q dataset-fashion-mnist || \
	     (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)) >/dev/null; \
	  else \
	    echo "Fashion-MNIST is not in $(DATASET_DIR): install Debian's dataset-fashion-mnist or set FASHION_MNIST_DIR"; \
	  fi; \
	fi

up: setup
	$(BIN)/python -m service up

postgres:
	@if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then \
	  pg_ctlcluster --skip-systemctl-redirect $(PG_VERSION) main start; \
	  for i in $$(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done; \
	fi

# Two pytest processes share the tests (each takes a contiguous half, and steals from the
# other's end when its own is done, so a module's tests mostly share one module fixture);
# those whose timings the others' load would move run alone after.
test: setup postgres
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n 2 --dist worksteal -m "not serial and not browser"
	$(BIN)/python -m pytest -m serial

# The accessibility checker the browser tests run in each page, from npm (pinned).
AXE_VERSION := 4.14.1
AXE := .cache/axe-core/axe.min.js

# The dashboard in a real headless Chromium, against a live API and worker. Installs Debian's
# chromium and chromium-driver where they are missing and this is root on Debian.
test-browser: setup
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver \
	    || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver); \
	  fi; \
	fi
	@if [ ! -f $(AXE) ] && command -v npm >/dev/null; then \
	  mkdir -p $(dir $(AXE)) && cd $(dir $(AXE)) && npm pack --silent axe-core@$(AXE_VERSION) >/dev/null \
	  && tar -xzf axe-core-$(AXE_VERSION).tgz --strip-components=1 package/axe.min.js; \
	fi
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then \
	  $(BIN)/python -m pytest -m browser tests/test_dashboard.py; \
	else \
	  echo "SKIPPED: the browser tests: chromium and chromium-driver are missing and cannot be installed (root on Debian is needed)"; \
	fi

# Builds the image, runs the compose stack on host networking, trains, classifies, restarts.
docker-test:
	bash tests/docker/smoke.sh

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format:
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup
	command -v wrk >/dev/null || apt-get install -y -q wrk
	$(BIN)/python bench/train_overhead.py --repeats 5
	$(BIN)/python bench/predict_load.py
	$(BIN)/python bench/upload_parsing.py
	$(BIN)/python bench/gc_pause.py
	$(BIN)/python bench/trainer_child.py
	$(BIN)/python bench/api_startup.py
	$(BIN)/python bench/api_latency.py
	$(BIN)/python bench/burst.py

clean:
	rm -rf $(VENV) data .pytest_cache .ruff_cache
