# `make up` and `make test` do all set-up themselves; the venv lives in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DATASET_DIR := /usr/share/datasets/fashion-mnist
PG_VERSION = $(shell ls /etc/postgresql 2>/dev/null | head -n 1)

.PHONY: setup dataset up test docker-test lint format postgres bench clean

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

# Two pytest processes share the tests; those that measure time or memory run alone after.
test: setup postgres
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n 2 -m "not serial"
	$(BIN)/python -m pytest -m serial

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
	$(BIN)/python bench/api_latency.py
	$(BIN)/python bench/burst.py

clean:
	rm -rf $(VENV) data .pytest_cache .ruff_cache
