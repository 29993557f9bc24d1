"""What the MLflow UI and API show of a training run: its experiment, its datasets, its model."""

import hashlib
import json
import os
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import BIN, REPO, TINY, make_store
from weightspace.data import MEAN, STD, load_dataset
from weightspace.model import CNN
from weightspace.tracking.experiment import KIND, KIND_TAG, NAME

pytestmark = pytest.mark.e2e


def _plain_mlflow_run(store, *extra, env_update=None):
    """`mlflow run` exactly as a user types it: no experiment named anywhere unless given here."""
    env = {k: v for k, v in store.env.items() if k not in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID")}
    env.update(env_update or {})
    cmd = [str(BIN / "mlflow"), "run", str(REPO), "--env-manager", "local", "-e", "single",
           *[x for k, v in {**TINY, "epochs": "1"}.items() for x in ("-P", f"{k}={v}")], *extra]
    p = subprocess.run(cmd, cwd=store.workdir, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def test_runs_go_to_the_weightspace_experiment_unless_the_user_names_another(store):
    _plain_mlflow_run(store)
    c = store.client()
    exp = c.get_experiment_by_name(NAME)
    assert exp is not None and exp.tags.get(KIND_TAG) == KIND
    assert len(c.search_runs([exp.experiment_id])) == 1
    assert c.search_runs(["0"]) == []  # nothing in Default

    _plain_mlflow_run(store, "--experiment-name", "mine")
    mine = c.get_experiment_by_name("mine")
    assert len(c.search_runs([mine.experiment_id])) == 1 and mine.tags.get(KIND_TAG) == KIND

    _plain_mlflow_run(store, env_update={"MLFLOW_EXPERIMENT_ID": mine.experiment_id})
    assert len(c.search_runs([mine.experiment_id])) == 2 and len(c.search_runs([exp.experiment_id])) == 1


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    store = make_store("sqlite", tmp_path_factory.mktemp("model"))
    store.mlflow_run("single", {**TINY, "epochs": "2", "register_model": "tiny-cnn"})
    [run] = store.runs(status="FINISHED")
    return store, run


def test_training_and_test_data_are_logged_as_dataset_inputs(finished):
    _, run = finished
    data = load_dataset("digits", train_subset=int(TINY["train_subset"]))
    got = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(got) == {"digits-train", "digits-test"}
    for split, x, y, context in (("train", data.x_train, data.y_train, "training"),
                                 ("test", data.x_test, data.y_test, "evaluation")):
        d = got[f"digits-{split}"]
        want = hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest()[:16]
        assert d.dataset.digest == want
        assert json.loads(d.dataset.profile)["num_rows"] == len(y)
        assert {t.key: t.value for t in d.tags} == {"mlflow.data.context": context}
    assert json.loads(got["digits-train"].dataset.profile)["train_subset"] == int(TINY["train_subset"])


def test_the_final_model_loads_as_an_mlflow_model_and_predicts_digit_probabilities(finished, tmp_path):
    store, run = finished
    rid = run.info.run_id
    os.environ["MLFLOW_TRACKING_URI"] = store.uri
    try:
        model = mlflow.pyfunc.load_model(f"runs:/{rid}/model")
        images = np.random.default_rng(0).random((5, 1, 28, 28), dtype=np.float32)
        probs = model.predict(images)
        local = Path(MlflowClient(store.uri).download_artifacts(rid, "model", str(tmp_path)))
        registered = mlflow.pyfunc.load_model("models:/tiny-cnn/1").predict(images)
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI")
    # independently: the CNN rebuilt from model/model.safetensors, the data's normalisation by hand
    with safe_open(str(local / "model.safetensors"), "pt") as f:
        cfg = json.loads(f.metadata()["config"])
    cnn = CNN(width=float(cfg["width"]), dropout=float(cfg["dropout"]))
    cnn.load_state_dict(load_file(str(local / "model.safetensors")))
    with torch.no_grad():
        want = torch.softmax(cnn.eval()((torch.from_numpy(images) - MEAN) / STD), 1).numpy()
    assert probs.shape == (5, 10)
    np.testing.assert_allclose(probs, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(registered, want, rtol=1e-5, atol=1e-6)
    # saved as code, never pickled
    files = {p.name for p in local.rglob("*")}
    assert (
        "MLmodel" in files
        and "pyfunc_model.py" in files
        and not any(n.endswith((".pkl", ".pickle")) for n in files)
    )
    assert "loader_module: mlflow.pyfunc.loaders.code_model" in (local / "MLmodel").read_text()
    with pytest.raises(Exception, match="shape"):
        mlflow.pyfunc.load_model(str(local)).predict(images[:, 0])


class _RecordingClient(MlflowClient):
    """A real client that notes whether MLflow's download progress bar was on for each download."""

    def __init__(self, uri):
        super().__init__(uri)
        self.bars = []

    def download_artifacts(self, run_id, path, dst_path=None):
        self.bars.append((path, os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")))
        return super().download_artifacts(run_id, path, dst_path)


@pytest.mark.parametrize("terminal, setting, want", [
    (False, None, "false"), (True, "0", "false"), (True, None, "true"), (True, "1", "true")])
def test_loading_a_trajectory_shows_one_progress_bar_at_most(finished, tmp_path, monkeypatch,
                                                            terminal, setting, want):
    """MLflow draws a "Downloading artifacts" bar per download through an HTTP artifact store: one
    call of load_trajectory downloads twice (manifest, directory) and allows a bar for the second
    only, and only on a terminal with WEIGHTSPACE_PROGRESS not 0; trajectory() adds the predictions'
    directory, without a bar."""
    from weightspace.tracking import runs

    store, run = finished
    monkeypatch.setattr(runs.sys.stderr, "isatty", lambda: terminal)
    monkeypatch.delenv("WEIGHTSPACE_PROGRESS", raising=False)
    if setting is not None:
        monkeypatch.setenv("WEIGHTSPACE_PROGRESS", setting)
    client = _RecordingClient(store.uri)
    X, epochs = runs.load_trajectory(run.info.run_id, client, tmp_path / "cache")
    assert X.shape[0] == len(epochs) == 3
    assert client.bars == [("trajectory/manifest.json", "false"), ("trajectory", want)]
    # trajectory() reads the predictions too: one more download, small, never with a bar
    client.bars.clear()
    assert runs.trajectory(run.info.run_id, client, tmp_path / "cache").predictions is not None
    assert client.bars == [("trajectory/manifest.json", "false"), ("predictions", "false")]
    assert "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR" not in os.environ  # restored afterwards
