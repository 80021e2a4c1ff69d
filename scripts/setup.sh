#!/usr/bin/env bash
# Set-up on a fresh machine: a virtual environment in .venv with torch (CPU build) and the package.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch==2.13.0 is the CPU build (an unpinned torch pulls a CUDA build of several GB).
.venv/bin/python -c 'import torch' 2>/dev/null || .venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e '.[test]'
# The Label Studio server, for `nlp ls` and tests/test_labelstudio.py, in its own venv so its pinned
# dependencies (Django, ...) never touch .venv.
if [ ! -x .venv-ls/bin/label-studio ]; then
  "$PY" -m venv .venv-ls
  .venv-ls/bin/python -m pip install -q --upgrade pip
  .venv-ls/bin/python -m pip install -q 'label-studio==1.23.*'
fi
