"""The MLflow experiment weightspace's runs go to: ``weightspace``, unless the user names another.

``mlflow run`` creates a project's run before the entry point starts, in the experiment it
resolves from ``--experiment-name``/``--experiment-id``, then MLFLOW_EXPERIMENT_NAME /
MLFLOW_EXPERIMENT_ID, and last from MLflow's default-experiment providers. weightspace
registers one of those providers (entry point group ``mlflow.default_experiment_provider``
in pyproject.toml), in context only when the process is ``mlflow run`` of a project named
weightspace, so a plain ``mlflow run . -e single`` lands in ``weightspace`` and every choice
the user makes still wins. The experiment is tagged as model development, so the MLflow 3 UI
opens it as a training experiment.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking.default_experiment.abstract_context import DefaultExperimentProvider

NAME = "weightspace"
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"


def default_experiment_id(client: MlflowClient | None = None) -> str:
    """The id of the ``weightspace`` experiment, created (tagged) on first use."""
    client = client or MlflowClient()
    exp = client.get_experiment_by_name(NAME)
    if exp is None:
        try:
            return client.create_experiment(NAME, tags={KIND_TAG: KIND})
        except MlflowException:  # created meanwhile by a sibling launched at the same moment
            exp = client.get_experiment_by_name(NAME)
    return exp.experiment_id


def tag_kind(client: MlflowClient, experiment_id: str) -> None:
    """Mark an experiment weightspace logs into as model development, unless it says otherwise."""
    exp = client.get_experiment(experiment_id)
    if KIND_TAG not in exp.tags:
        client.set_experiment_tag(experiment_id, KIND_TAG, KIND)


def is_weightspace_project(uri: str) -> bool:
    """A local MLflow project directory whose MLproject says ``name: weightspace``."""
    try:
        text = (Path(uri) / "MLproject").read_text()
    except OSError:
        return False
    return re.search(rf"^name:\s*{NAME}\s*$", text, re.M) is not None


class WeightspaceExperimentProvider(DefaultExperimentProvider):
    """In context for ``mlflow run <weightspace project>`` when no experiment was named."""

    def in_context(self) -> bool:
        argv = sys.argv
        return len(argv) > 2 and Path(argv[0]).name == "mlflow" and argv[1] == "run" \
            and is_weightspace_project(argv[2])

    def get_experiment_id(self) -> str:
        return default_experiment_id()
