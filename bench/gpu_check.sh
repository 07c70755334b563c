#!/usr/bin/env bash
# The prepared GPU check (bench/gpu_check.py has the details): on a machine with one CUDA GPU, no network.
#
#   bench/gpu_check.sh [--out DIR] [--steps 1 2 3 4 5]
#
# Needs gpu_payload/ beside this tree (`make gpu-payload` where the offline model and data are) and a
# Python with a CUDA build of torch and the packages bench/gpu_check.py lists; PYTHON picks it
# (default: .venv/bin/python if there is one, else python3). Without a GPU it exits 2 saying so.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec "$PYTHON" -m bench.gpu_check "$@"
