"""Function-space probe (Fort et al. 2019): do distant final solutions compute different functions?"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
from scipy.spatial.distance import pdist

from weightspace.analysis.plotting import legend, new_figure, save_to
from weightspace.analysis.probes.base import Probe, ProbeInputs
from weightspace.analysis.report import Claim


def disagreement(preds: np.ndarray) -> np.ndarray:
    """Per pair i < j (row-major), the fraction of samples on which models i and j predict different
    classes; preds (M, N) class indices."""
    return pdist(np.asarray(preds), "hamming")


@dataclass
class FunctionSpaceResult:
    names: list[str]
    pairs: list[tuple[int, int]]        # i < j, row-major
    disagreement: np.ndarray            # per pair: test prediction disagreement
    distance: np.ndarray                # per pair: ‖θ_i − θ_j‖ of the final weights
    test_error: np.ndarray              # per run: test error of the final weights

    @property
    def disagreement_over_error(self) -> np.ndarray:
        """Per pair: disagreement over the pair's mean test error."""
        i, j = np.array(self.pairs).T
        return self.disagreement / np.maximum(0.5 * (self.test_error[i] + self.test_error[j]), 1e-12)


def function_space(inp: ProbeInputs) -> FunctionSpaceResult:
    """Test-set predictions of every run's final weights, compared pair by pair."""
    finals = [inp.final(i) for i in range(len(inp.trajs))]
    preds = np.stack([inp.model.predict(th, inp.x_test) for th in finals])
    err = (preds != inp.y_test.cpu().numpy()[None]).mean(1)
    weights = np.stack([th.cpu().numpy() for th in finals]).astype(np.float64)
    return FunctionSpaceResult(inp.names, list(combinations(range(len(finals)), 2)), disagreement(preds),
                               pdist(weights), err)


# -- metrics ---------------------------------------------------------------------------------------
def metrics(r: FunctionSpaceResult) -> dict[str, float]:
    d = r.disagreement
    m = {"disagreement_mean": float(d.mean()), "disagreement_min": float(d.min()),
         "disagreement_max": float(d.max()),
         "disagreement_over_error_mean": float(np.mean(r.disagreement_over_error)),
         "fs_test_error_mean": float(r.test_error.mean()),
         "fs_weight_distance_mean": float(r.distance.mean())}
    for (i, j), di in zip(r.pairs, d):
        m[f"disagreement_run{i}_run{j}"] = float(di)
    return m


# -- claims ----------------------------------------------------------------------------------------
def claims(r: FunctionSpaceResult) -> list[Claim]:
    """Fort et al. 2019: distant solutions disagree more than their own error rate explains."""
    d, err = r.disagreement.mean(), r.test_error.mean()
    return [Claim(
        "distant solutions compute different functions (Fort et al. 2019)", "-",
        f"test disagreement mean {d:.4f} (={np.mean(r.disagreement_over_error):.2f}x the mean test "
        f"error {err:.4f}) at weight distance {r.distance.mean():.3g}", "-",
        "different functions" if d > err else "similar functions (disagreement below the error rate)")]


# -- figures ---------------------------------------------------------------------------------------
def figures(r: FunctionSpaceResult, out: Path) -> list[Path]:
    fig, (ax,) = new_figure(w=6, h=4.5)
    err = r.test_error.mean()
    ax.scatter(r.distance, r.disagreement, c="C0", label="sibling pairs")
    for (i, j), w, d in zip(r.pairs, r.distance, r.disagreement):
        ax.annotate(f"{r.names[i]} / {r.names[j]}", (w, d), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")
    ax.axhline(err, color="C3", ls="--", label=f"mean test error {err:.4f}")
    ax.set(xlabel="‖θ_i − θ_j‖ (final weights)", ylabel="test prediction disagreement",
           title="Function space vs weight space")
    legend(ax, fontsize=7)
    return [save_to(fig, out, "disagreement_vs_distance.png")]


PROBE = Probe("disagreement", lambda o, n: o.disagreement and n >= 2, function_space, metrics, figures,
              claims, classes=True)
