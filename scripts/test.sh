#!/usr/bin/env bash
# The project's test command: lint, format check, type check, then the test suite
# (slow and GPU tests are excluded by default; see scripts/bench_*.py for benchmarks).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
ruff check .
ruff format --check .
mypy
python -m pytest "$@"
