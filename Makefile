# Two commands do all set-up on a fresh machine:
#   make repro   create .venv, install, run the pipeline (dvc repro)
#   make test    create .venv, install, run the tests
# Offline: make repro DATA=../shared/data/conll2003 MODEL=/path/to/local/model
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION := 2.13.0

.PHONY: setup repro test bench pr-report clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first and pinned: on these machines 2.13.0 is a CPU wheel; the project's own range is
# satisfied by it, so no dependency drags in a multi-GB CUDA build.
$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/pip install -q torch==$(TORCH_VERSION)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed

repro: setup
	@if [ -n "$(DATA)$(MODEL)" ]; then \
	  $(BIN)/python -m nerpipe.set_params $(if $(DATA),data.source=$(DATA)) $(if $(MODEL),model.name=$(MODEL)); fi
	source $(BIN)/activate && dvc repro

test: setup
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV)
