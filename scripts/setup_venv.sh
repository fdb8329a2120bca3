#!/usr/bin/env bash
# Create .venv (once) with gencnn and all its extras installed in editable mode.
# torch 2.14.1 / torchvision 0.29.1 come from local disk on our machines (a pip constraints file pins them).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import gencnn_plugin, timm, pytest, onnx, PySide6" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.gencnn-installed ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[all]"
  touch .venv/.gencnn-installed
fi
