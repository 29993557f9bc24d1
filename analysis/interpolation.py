"""Linear interpolation between two parameter vectors (Goodfellow et al. 2015; Frankle et al. 2020).

The core takes a generic ``evaluate(thetas (K, P)) -> {name: (K,) values}``, so the
same code runs on a closed-form quadratic in the tests and on the CNN in the probes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

Evaluate = Callable[[torch.Tensor], dict[str, np.ndarray]]


def alphas(n: int) -> np.ndarray:
    """n evenly spaced α in [0, 1], endpoints included."""
    if n < 2:
        raise ValueError(f"interpolation needs at least 2 points, got {n}")
    return np.linspace(0.0, 1.0, n)


def line(theta_a: torch.Tensor, theta_b: torch.Tensor, a: np.ndarray) -> torch.Tensor:
    """(K, P) points θ(α) = (1−α)θa + αθb; in this form α=0 and α=1 give θa and θb exactly."""
    al = torch.as_tensor(a, dtype=theta_a.dtype, device=theta_a.device)[:, None]
    return (1 - al) * theta_a[None] + al * theta_b[None]


def barrier_frankle(values: np.ndarray) -> float:
    """max_α v(α) − mean(v(0), v(1)) (Frankle et al. 2020, on error)."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.max() - 0.5 * (v[0] + v[-1]))


def barrier_chord(a: np.ndarray, values: np.ndarray) -> float:
    """max_α [v(α) − ((1−α)v(0) + αv(1))]: the height above the chord. 0 for a convex v."""
    a = np.asarray(a, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    return float((v - ((1 - a) * v[0] + a * v[-1])).max())


def is_monotone_decreasing(values: np.ndarray, rtol: float = 0.0) -> bool:
    """True when every step along α lowers (or keeps) the value, up to rtol of its scale."""
    v = np.asarray(values, dtype=np.float64)
    return bool(np.all(np.diff(v) <= rtol * np.abs(v[:-1])))


@dataclass
class Curve:
    name: str                                   # e.g. "run0: init -> final" or "run0 -> run1"
    alphas: np.ndarray
    values: dict[str, np.ndarray] = field(default_factory=dict)   # e.g. train_loss, test_error

    def barriers(self) -> dict[str, float]:
        out = {}
        for k, v in self.values.items():
            out[f"{k}/frankle"] = barrier_frankle(v)
            out[f"{k}/chord"] = barrier_chord(self.alphas, v)
        return out


def interpolate(theta_a: torch.Tensor, theta_b: torch.Tensor, evaluate: Evaluate, n: int = 25,
                name: str = "") -> Curve:
    a = alphas(n)
    return Curve(name, a, {k: np.asarray(v, dtype=np.float64) for k, v in evaluate(line(theta_a, theta_b, a)).items()})
