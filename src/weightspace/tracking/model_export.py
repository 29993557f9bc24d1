"""Save a run's final CNN as an MLflow Model directory (pyfunc from code, no pickle)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .progress import mlflow_bar

PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")


def save_mlflow_model(weights: Path, out_dir: Path) -> Path:
    """``out_dir``: MLmodel, the model's code, its signature and input example, the weights."""
    import mlflow.pyfunc
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    # unnamed tensors: predict() receives the array itself (images, float32 pixels in [0, 1])
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1, 28, 28))]),
                               outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 10))]))
    example = np.zeros((2, 1, 28, 28), dtype=np.float32)
    with mlflow_bar(False):  # MLflow "downloads" the local weights file into the model, with a bar
        mlflow.pyfunc.save_model(str(out_dir), python_model=str(PYFUNC_CODE),
                                 artifacts={"weights": str(weights)},
                                 signature=signature, input_example=example,
                                 # explicit: inferring them would load the model in a subprocess
                                 pip_requirements=["mlflow", "torch", "safetensors", "numpy", "weightspace"])
    return out_dir


def register_model(run_id: str, name: str) -> str:
    """Register the run's ``model`` in the Model Registry under ``name``; the new version's number."""
    import mlflow

    return mlflow.register_model(f"runs:/{run_id}/model", name).version
