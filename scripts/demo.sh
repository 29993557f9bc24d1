#!/usr/bin/env bash
# The README's main job: a short version of the paper suite on the embedded default
# store (sqlite:///mlflow.db) on a 2-core CPU (measured times: BENCHMARKS.md), ending with the
# analyses (figures and claims report) and how to open the MLflow UI.
# Extra arguments go to `mlflow run`, e.g. scripts/demo.sh -P epochs=50
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db}"
export PATH="$PWD/.venv/bin:$PATH"
python -m weightspace init-store >/dev/null   # create the schema once, before any parallel use
mlflow run . --env-manager local -e paper \
  -P train_subset=2000 -P width=0.25 -P batch_size=32 -P epochs=30 -P pretrain_epochs=5 -P replicas=3 \
  -P single_snapshot_every=1 -P snapshot_every=5 -P siblings=processes "$@"
echo
echo "Done. Browse the runs, metrics and figures with:"
echo "  .venv/bin/mlflow ui --backend-store-uri $MLFLOW_TRACKING_URI"
echo "then open http://127.0.0.1:5000/#/experiments?workflowType=machine_learning (the experiment weightspace)"
