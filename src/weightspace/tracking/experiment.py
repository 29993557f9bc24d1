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


def get_or_create(client: MlflowClient, name: str, tags: dict[str, str] | None = None) -> str:
    """The id of experiment ``name``, created with ``tags`` when missing.

    Siblings launched at the same moment all find it missing and all try to create it; the store's
    unique key lets one win, and the others read back the winner's experiment.
    """
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, tags=tags)
        except MlflowException:
            exp = client.get_experiment_by_name(name)
            if exp is None:  # not a race: the store refused for another reason
                raise
    return exp.experiment_id


def default_experiment_id(client: MlflowClient | None = None) -> str:
    """The id of the ``weightspace`` experiment, created (tagged) on first use."""
    return get_or_create(client or MlflowClient(), NAME, {KIND_TAG: KIND})


def tag_kind(client: MlflowClient, experiment_id: str) -> None:
    """Mark an experiment weightspace logs into as model development, unless it says otherwise.

    Five runs started together all see the tag missing and all set it; on PostgreSQL the losers'
    inserts break the tag table's primary key and the server answers with an error. A tag that is
    there when we look again is the same tag, set by a sibling: that is success.
    """
    if KIND_TAG in client.get_experiment(experiment_id).tags:
        return
    try:
        client.set_experiment_tag(experiment_id, KIND_TAG, KIND)
    except MlflowException:
        if KIND_TAG not in client.get_experiment(experiment_id).tags:
            raise


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
