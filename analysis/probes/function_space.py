"""Function-space probe (Fort et al. 2019): do distant final solutions compute different functions?"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy.spatial.distance import pdist

from weightspace.analysis.probes.base import ProbeInputs


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
