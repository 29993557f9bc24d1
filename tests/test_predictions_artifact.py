"""A run's predictions: class probabilities of each snapshot on one fixed test subset, written beside the
trajectory by the training entry points and by ``weightspace.record``, read back verified.

Each stored probability is checked against an independent float64 forward pass of the stored
snapshot (torch's functional ops, numpy's softmax). Float16 keeps 11 significant bits, so rounding
moves a probability p by at most 2**-11 * p (2**-25 where p is subnormal in float16); the float32
forward pass adds a few 1e-7. Hence |stored - exact| <= 2**-11 * exact + 1e-6 (``close``), and a row's
sum is 1 within 2**-11 + 1e-5 (the relative bound summed over the row, plus the subnormals).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import weightspace
from conftest import TINY, end_active_runs, use_store
from weightspace.data import load_dataset
from weightspace.model import Layout
from weightspace.predictions import DTYPE, subset_indices
from weightspace.tracking.predictions_artifact import check_section
from weightspace.tracking.runs import TrajectoryError, trajectory
from weightspace.tracking.trajectory_artifact import complete_manifest

HALF_ULP = 2.0 ** -11
SUM_BOUND = HALF_ULP + 1e-5
PARAMS = {**TINY, "snapshot_every": "1", "predictions_subset": "50"}


def close(stored: np.ndarray, exact: np.ndarray) -> bool:
    return bool(np.all(np.abs(stored.astype(np.float64) - exact) <= HALF_ULP * exact + 1e-6))


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def cnn_logits(theta: np.ndarray, layout: dict, x: torch.Tensor) -> np.ndarray:
    """The CNN's eval-mode logits in float64, from the flat vector and layout.json alone."""
    lay = Layout.from_json(json.dumps(layout))
    w = {k: v.double() for k, v in lay.unflatten(torch.from_numpy(theta.astype(np.float64))).items()}
    h = F.max_pool2d(F.relu(F.conv2d(x.double(), w["conv1.weight"], w["conv1.bias"], padding=2)), 2)
    h = F.max_pool2d(F.relu(F.conv2d(h, w["conv2.weight"], w["conv2.bias"], padding=2)), 2)
    h = F.relu(F.linear(h.flatten(1), w["fc1.weight"], w["fc1.bias"]))
    return F.linear(h, w["fc2.weight"], w["fc2.bias"]).numpy()


def run_of(store, params: dict):
    store.mlflow_run("single", params)
    return max(store.runs(), key=lambda r: r.info.start_time)


def listed(store, rid: str, folder: str) -> set[str]:
    return {f.path for f in store.client().list_artifacts(rid, folder)}


# -- training runs ----------------------------------------------------------------------------

def test_a_training_run_logs_each_snapshots_probabilities_on_the_fixed_subset(store):
    c = store.client()
    run = run_of(store, PARAMS)
    t = trajectory(run.info.run_id, c, store.workdir / "cache-a")
    p = t.predictions
    test = load_dataset("digits")
    idx = subset_indices(len(test.y_test), 50)
    assert len(set(idx.tolist())) == 50 and len(test.y_test) > 50           # a proper subset
    assert p.epochs.tolist() == t.epochs.tolist() == [0, 1, 2, 3]          # one file per snapshot
    assert np.array_equal(p.indices, idx) and np.array_equal(p.labels, test.y_test[idx].numpy())
    assert p.probs.dtype == DTYPE and p.probs.shape == (4, 50, 10)
    for s, e in enumerate(t.epochs):
        exact = softmax(cnn_logits(t.load(s), t.layout, test.x_test[idx]))
        assert close(p.probs[s], exact), (e, np.abs(p.probs[s] - exact).max())
        assert np.abs(p.probs[s].astype(np.float64).sum(1) - 1).max() <= SUM_BOUND
    # stored as the manifest says: (N, C) float16 with numpy's 128-byte header
    _, manifest = complete_manifest(c, run.info.run_id)
    assert manifest["predictions"]["epoch_0003.npy"]["size"] == 128 + 50 * 10 * 2
    assert listed(store, run.info.run_id, "predictions") == \
        {"predictions/subset.json", *(f"predictions/epoch_000{e}.npy" for e in range(4))}

    # a sibling (another data order) is predicted on the same images
    sib = run_of(store, {**PARAMS, "shuffle_seed": "1"})
    q = trajectory(sib.info.run_id, c, store.workdir / "cache-a").predictions
    assert np.array_equal(q.indices, p.indices) and np.array_equal(q.labels, p.labels)
    assert sib.data.tags["weightspace.group"] == run.data.tags["weightspace.group"]

    # predictions_subset=0 logs none, and the option leaves the trajectory and its metrics as they were
    off = run_of(store, {**PARAMS, "predictions_subset": "0"})
    u = trajectory(off.info.run_id, c, store.workdir / "cache-a")
    assert u.predictions is None and not listed(store, off.info.run_id, "predictions")
    assert "predictions" not in complete_manifest(c, off.info.run_id)[1]
    assert np.array_equal(u.stack(), t.stack())                               # bitwise
    for m in ("train_loss", "test_loss", "test_accuracy"):
        assert np.array_equal(u.metrics[m][1], t.metrics[m][1]), m
    assert off.data.tags["weightspace.group"] == run.data.tags["weightspace.group"]


def test_a_tampered_predictions_file_is_refused_in_one_line(store):
    run = run_of(store, {**PARAMS, "epochs": "1"})
    rid = run.info.run_id
    root = Path(store.client().get_run(rid).info.artifact_uri.replace("file://", ""))
    f = root / "predictions" / "epoch_0001.npy"
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 1                                  # one bit of one probability: same size, other sha256
    f.write_bytes(bytes(raw))
    with pytest.raises(TrajectoryError) as e:
        trajectory(rid, store.client(), store.workdir / "fresh-cache")
    msg = str(e.value)
    assert msg == f"run {rid}: predictions/epoch_0001.npy is corrupted or truncated (sha256 differs from " \
                  "the one recorded when it was logged)" and "\n" not in msg


@pytest.mark.parametrize("section, what", [
    ({"epoch_0001.npy": {"epoch": 1, "sha256": "0" * 64, "size": 1}}, "must list predictions/subset.json"),
    ({"subset.json": {"sha256": "0" * 64, "size": 1},
      "../x.npy": {"epoch": 1, "sha256": "0" * 64, "size": 1}}, "entry '../x.npy'"),
    ({"subset.json": {"sha256": "0" * 64, "size": 1},
      "epoch_0002.npy": {"epoch": 1, "sha256": "0" * 64, "size": 1}}, "entry 'epoch_0002.npy'"),
    ({"subset.json": {"sha256": "0" * 64, "size": 1},
      "epoch_0009.npy": {"epoch": 9, "sha256": "0" * 64, "size": 1}}, "entry 'epoch_0009.npy'"),
    ({"subset.json": {"sha256": "xyz", "size": 1}}, "entry 'subset.json'"),
])
def test_a_malformed_predictions_section_is_refused_before_any_file_is_opened(section, what):
    with pytest.raises(TrajectoryError, match=what):
        check_section("r1", section, [0, 1])
    good = {"subset.json": {"sha256": "0" * 64, "size": 1},
            "epoch_0001.npy": {"epoch": 1, "sha256": "0" * 64, "size": 1}}
    assert check_section("r1", good, [0, 1]) == [1]


# -- weightspace.record -----------------------------------------------------------------------

@pytest.fixture
def env(store, monkeypatch):
    yield use_store(store, monkeypatch)
    end_active_runs()


class Noisy(nn.Module):
    """A model with dropout and a frozen part that draws from the global RNG on every call, even in
    eval mode (without changing its output)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body, self.drop, self.head = nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.drop(torch.relu(self.body(x)))) + 0.0 * torch.rand(())


def fit_one(model: nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))


def test_record_with_data_logs_predictions_and_leaves_the_model_and_the_rng_alone(env):
    x, y = torch.randn(20, 4, generator=torch.Generator().manual_seed(1)), torch.arange(20) % 3
    model = Noisy()
    model.head.eval()                                   # a module the user froze stays frozen
    with weightspace.record(model, group="g", seed=1, epochs=2, predictions=(x, y)) as rec:
        for e in (1, 2):
            fit_one(model)
            before = torch.get_rng_state()
            rec.epoch_end(e)
            assert torch.equal(torch.get_rng_state(), before)     # the model drew, the user's RNG did not
            assert model.training and model.drop.training and not model.head.training
    [run] = env.runs()
    assert run.data.params["predictions_subset"] == "20"
    t = trajectory(run.info.run_id, env.client())
    p = t.predictions
    assert p.epochs.tolist() == [0, 1, 2] and np.array_equal(p.labels, y.numpy())
    assert np.array_equal(p.indices, np.arange(20))
    for s in range(3):
        theta = t.load(s)
        w1, b1, w2, b2 = np.split(theta.astype(np.float64), np.cumsum([32, 8, 24]))
        exact = softmax(np.maximum(x.numpy() @ w1.reshape(8, 4).T + b1, 0) @ w2.reshape(3, 8).T + b2)
        assert close(p.probs[s], exact), s


def test_record_without_data_logs_no_predictions(env):
    model = Noisy()
    with weightspace.record(model, group="g", epochs=1) as rec:
        fit_one(model)
        rec.epoch_end(1)
    [run] = env.runs()
    assert trajectory(run.info.run_id, env.client()).predictions is None
    assert not {f.path for f in env.client().list_artifacts(run.info.run_id, "predictions")}
    assert "predictions_subset" not in run.data.params


@pytest.mark.parametrize("data, what", [
    (torch.randn(5, 4), "must be \\(inputs, labels\\), two tensors"),
    ((torch.randn(5, 4), torch.zeros(4, dtype=torch.int64)), "labels must be a 1-D tensor of 5"),
    ((torch.randn(5, 4), torch.zeros(5)), "labels must be integer class indices >= 0, got torch.float32"),
    ((torch.randn(5, 4), -torch.ones(5, dtype=torch.int64)), "labels must be integer class indices"),
    ((torch.randn(0, 4), torch.zeros(0, dtype=torch.int64)), "inputs must be a non-empty tensor"),
])
def test_record_refuses_bad_data_in_one_line_before_any_run(env, data, what):
    with pytest.raises(ValueError, match=what) as e:
        weightspace.record(Noisy(), group="g", predictions=data)
    assert "\n" not in str(e.value) and not env.runs()


def test_record_refuses_labels_beyond_the_models_classes(env):
    data = (torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0]))      # 4 classes, the model has 3
    with pytest.raises(ValueError, match=r"outputs of shape \(5, 3\); expected \(5, classes\) with classes"):
        with weightspace.record(Noisy(), group="g", predictions=data):
            pass
    [run] = env.runs()
    assert run.info.status == "FAILED"
