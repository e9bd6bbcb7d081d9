#!/usr/bin/env bash
# The GPU paths, each run once and checked, in one table: bench/gpu_check.sh [--smoke]  (see bench/gpu_check.py)
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
exec "$python" bench/gpu_check.py "$@"
