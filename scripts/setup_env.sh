#!/usr/bin/env bash
# Create .venv (Python 3.11+) and install weightspace with its test dependencies.
# Idempotent: a second call only checks. Used by scripts/demo.sh, scripts/test.sh and CI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import weightspace, mlflow, torch, torchvision, optuna, sklearn, pytest, xdist, ray" 2>/dev/null; then
  .venv/bin/pip install -q --upgrade pip
  # torch/torchvision first and pinned: the versions this project is tested with
  # (and, on the development machines, the ones available offline).
  .venv/bin/pip install -q "torch==2.14.1" "torchvision==0.29.1"
  # An editable install of this layout (analysis/ mapped to weightspace.analysis) goes through
  # setuptools' import finder, which always adds an information-only "Editable installation"
  # notice; it is not a problem with the package, so it is not shown.
  PYTHONWARNINGS="ignore:Editable installation" .venv/bin/pip install -q -e ".[test]"
fi
.venv/bin/python -c "import mlflow, torch; print(f'weightspace env ready: mlflow {mlflow.__version__}, torch {torch.__version__}')"
