"""A training run's data as MLflow dataset inputs: the Dataset column and the run page show them."""

from __future__ import annotations

import hashlib
import json

import torch
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.tracking import MlflowClient

from ..config import TrainConfig
from ..data import SUBSET_SEED, Data

CONTEXT_TAG = "mlflow.data.context"


def digest(x: torch.Tensor, y: torch.Tensor) -> str:
    """A content hash of one split as the run trained on it (after subsetting)."""
    h = hashlib.sha256()
    for t in (x, y):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def dataset_inputs(cfg: TrainConfig, data: Data) -> list[DatasetInput]:
    """``<dataset>-train`` (context training) and ``<dataset>-test`` (context evaluation)."""
    shipped = {"mnist": "weightspace (shipped MNIST)", "digits": "sklearn.datasets.load_digits"}
    source = cfg.data_dir or shipped.get(cfg.dataset, cfg.dataset)
    out = []
    for split, x, y, context in (("train", data.x_train, data.y_train, "training"),
                                 ("test", data.x_test, data.y_test, "evaluation")):
        profile = {"num_rows": len(y), "shape": list(x.shape[1:])}
        if split == "train" and cfg.train_subset:
            profile.update(train_subset=cfg.train_subset, subset_seed=SUBSET_SEED)
        ds = Dataset(name=f"{cfg.dataset}-{split}", digest=digest(x, y), source_type="local",
                     source=json.dumps({"uri": source}), profile=json.dumps(profile))
        out.append(DatasetInput(ds, tags=[InputTag(CONTEXT_TAG, context)]))
    return out


def log_datasets(client: MlflowClient, run_id: str, cfg: TrainConfig, data: Data) -> None:
    """Log the run's two dataset inputs once (a resumed run already has them).

    The look before logging is what makes this safe to retry: an attempt whose answer was lost
    may have logged them already.
    """
    if client.get_run(run_id).inputs.dataset_inputs:
        return
    client.log_inputs(run_id, datasets=dataset_inputs(cfg, data))
