"""The final CNN of a run as an MLflow pyfunc model, saved as code (MLflow's "models from code").

MLflow copies this file into the model directory and runs it when the model is loaded, so
nothing is pickled: the weights are the run's ``model.safetensors`` (an artifact of the
model), the architecture is rebuilt from the width and dropout in its metadata.

    probs = mlflow.pyfunc.load_model(f"runs:/{run_id}/model").predict(images)

``images``: float32 pixels in [0, 1], shape (N, 1, 28, 28) (the model's signature); the
result is (N, 10) digit probabilities. Loading needs weightspace installed (it defines the CNN).
"""

from __future__ import annotations

import json

import mlflow
import numpy as np


class CNNClassifier(mlflow.pyfunc.PythonModel):
    # The signature is explicit (tensors): no type-hint validation, and no warning asking for hints.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        import torch
        from safetensors import safe_open
        from safetensors.torch import load_file

        from weightspace.data import MEAN, STD
        from weightspace.model import CNN

        path = context.artifacts["weights"]
        with safe_open(path, "pt") as f:
            config = json.loads((f.metadata() or {})["config"])
        self.model = CNN(width=float(config["width"]), dropout=float(config["dropout"]))
        self.model.load_state_dict(load_file(path))
        self.model.eval()
        self.mean, self.std, self.torch = MEAN, STD, torch

    def predict(self, context, model_input, params=None):
        x = self.torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise ValueError(f"expected images of shape (N, 1, 28, 28), got {tuple(x.shape)}")
        with self.torch.no_grad():
            return self.torch.softmax(self.model((x - self.mean) / self.std), dim=1).numpy()


mlflow.models.set_model(CNNClassifier())
