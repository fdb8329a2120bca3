#!/usr/bin/env bash
# The test suite (what CI runs): lint, then pytest on the CPU. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
export GENCNN_DATA=${GENCNN_DATA:-$PWD/../shared/data}
export QT_QPA_PLATFORM=offscreen
.venv/bin/ruff check .
.venv/bin/python -m pytest -q "$@"
