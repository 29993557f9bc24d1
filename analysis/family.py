"""One family of sibling runs, measured once: the distances and spectra every claim of the paper
reads (``Family``), and how each kind of family is drawn. ``PaperClaim`` is the shape of one claim's
module in ``claims``. Plain functions over trajectories, no MLflow."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from weightspace.analysis.distances import (
    FinalDistances,
    PairwiseOverEpochs,
    RunGeometry,
    common_epochs,
    final_distances,
    normalise_pairwise,
    pairwise_over_epochs,
    run_geometry,
    same_norm_distances,
    summary_stats,
    upper_values,
)
from weightspace.analysis.dynamics import Dynamics, family_dynamics
from weightspace.analysis.nullmodel import (
    ClockNull,
    bootstrap_beyond,
    centre,
    diffusion_clock,
    diffusion_rate,
    family_nulls,
)
from weightspace.analysis.pca import Gram, PCAResult, compute_gram
from weightspace.analysis.prediction_family import PredictionSpace, measure_predictions
from weightspace.analysis.report import Claim
from weightspace.trajectories import Trajectory

TOP_K = (2, 10)         # the paper's top-2 and top-10 claims: the bootstrap intervals are drawn for these
# Families whose runs start apart: their null starts from the measured spread of the starts (the
# others share one start: same-init runs, clones at the fork).
DIFFERENT_STARTS = ("different_init", "mixed", "recorded")
RECORDED = "recorded"     # runs of weightspace.record: any model, on any data


@dataclass(frozen=True)
class FamilyKind:
    """How one kind of sibling family is drawn, and which claims apply to it beyond the common ones."""

    pca_figure: str                     # file name of its 2D PCA figure
    pca_title: str                      # title; {s} is the plural s of "path", {family} the family
    panels: bool = False                # a PCA panel per fit on the first 1, 2, 5 runs (Figures 1 and 2)
    panel_label: str = "PCA fit on {n} run(s)"
    stem: bool = False                  # draw the shared pretraining path, when given
    divergence_figure: str = "pairwise_distance_over_epochs.png"
    diverging: str = ""                 # runs from one point, which the paper says drift apart ("": no claim)


# The kinds of sibling family the analysis knows, by the name of the experiment that makes them.
FAMILY_KINDS = {
    "single": FamilyKind("pca_paths.png", "2D PCA of the path{s} ({family})"),
    "different_init": FamilyKind("fig1_pca_different_init.png",
                                 "2D PCA of paths from different initialisations", panels=True),
    "same_init": FamilyKind("fig2_pca_same_init.png", "2D PCA of paths from one shared initialisation",
                            panels=True, diverging="same-init runs (different data order)"),
    "clone": FamilyKind("fig3b_pca_clones.png", "2D PCA of clone paths after the shared pretraining",
                        panel_label="PCA fit on all clones", stem=True,
                        divergence_figure="fig3c_clone_divergence.png",
                        diverging="clones of one pretrained model"),
    "mixed": FamilyKind("pca_paths.png", "2D PCA of the path{s} ({family})"),
    "recorded": FamilyKind("pca_paths.png", "2D PCA of the path{s} ({family} with weightspace.record)"),
}


@dataclass
class Geometry:
    """Distances of a family: per run, between final solutions, and between runs over common epochs."""

    runs: list[RunGeometry]
    final: FinalDistances
    over_epochs: PairwiseOverEpochs | None  # None for one run or no common epoch
    origin: dict[str, float]            # summary of the final ‖θ‖
    pairwise: dict[str, float]          # summary of the final pairwise distances
    by_path: np.ndarray                 # final distances over the pair's mean path length
    by_norm: np.ndarray                 # ... over the pair's mean ‖θ‖
    start: FinalDistances               # between the runs' first snapshots (the inits; clones: the fork)
    baselines: dict[str, dict[str, float]]  # summaries: start_pairwise, start_origin, same_norm_pairwise


def geometry(trajs: list[Trajectory], progress: bool) -> Geometry:
    n = len(trajs)
    bar = tqdm(trajs, desc="run geometry", disable=not progress)
    geoms = [run_geometry(t, progress=progress) for t in bar]
    fd, st = final_distances(trajs, progress=progress), final_distances(trajs, progress=progress, first=True)
    pw = pairwise_over_epochs(trajs, progress=progress) if n >= 2 and len(common_epochs(trajs)) else None
    pairs = lambda D: upper_values(D) if n >= 2 else []  # noqa: E731
    base = {"start_pairwise": summary_stats(pairs(st.dist)), "start_origin": summary_stats(st.norm),
            "same_norm_pairwise": summary_stats(pairs(same_norm_distances(fd.norm)))}
    return Geometry(geoms, fd, pw, summary_stats(fd.norm), summary_stats(pairs(fd.dist)),
                    normalise_pairwise(fd.dist, np.array([g.total_path for g in geoms])),
                    normalise_pairwise(fd.dist, fd.norm), st, base)


@dataclass
class Spectra:
    """Every PCA of a family, from one Gram pass, and the random-walk null at the same snapshots."""

    gram: Gram
    centred: PCAResult                  # joint
    uncentred: PCAResult                # joint, θ − θ_final of each run
    per_run: list[PCAResult]
    per_run_uncentred: list[PCAResult]
    nulls: dict[str, ClockNull]         # "epochs" always, "diffusion" when every run logs its step lengths
    start_var: float                    # start variance per dimension, in epochs of diffusion (0: one start)
    boot: dict[bool, list[tuple[float, float]]]   # centred? -> per TOP_K: interval of the share beyond null
    dynamics: Dynamics                  # increments and the rank-matched Monte Carlo walk null

    @property
    def matched(self) -> ClockNull:
        """The null whose clock matches the runs' measured diffusion (epochs when it is not measured)."""
        return self.nulls.get("diffusion", self.nulls["epochs"])


def spectra(trajs: list[Trajectory], family: str, geo: Geometry, progress: bool) -> Spectra:
    gram = compute_gram(trajs, progress=progress)
    n = len(trajs)
    epochs = [np.asarray(t.epochs, np.float64) for t in trajs]
    taus = [diffusion_clock(t.epochs, *t.metric("step_length")) for t in trajs]
    S = None    # the Gram of the centred starts, in ‖θ‖² units
    if family in DIFFERENT_STARTS and n > 1:
        first = [int(gram.rows([r])[0]) for r in range(n)]
        S = centre(gram.G[np.ix_(first, first)])
    rate = diffusion_rate(epochs, taus, [g.step for g in geo.runs])
    nulls, start_var = family_nulls(epochs, taus, S, rate)
    c, u = gram.pca(centred=True), gram.pca(centred=False)
    sp = Spectra(gram, c, u, [gram.pca(runs=[r]) for r in range(n)],
                 [gram.pca(runs=[r], centred=False) for r in range(n)], nulls, start_var, {},
                 family_dynamics(gram.G, gram.run_index, epochs, taus, S, rate, c.explained_variance_ratio,
                                 u.explained_variance_ratio))
    if n >= 2:
        m = sp.matched
        sp.boot[True] = bootstrap_beyond(gram.G, m.cov_centred, gram.run_index, TOP_K, True)
        sp.boot[False] = bootstrap_beyond(gram.kernel(centred=False)[0], m.cov_uncentred, gram.run_index,
                                          TOP_K, False)
    return sp


def midpoint_epoch(trajs: Sequence[Trajectory]) -> int:
    """The paper's "by epoch 100" is the midpoint of its 200 epochs; shorter runs use their midpoint."""
    last = max(int(t.epochs[-1]) for t in trajs)
    return 100 if last >= 200 else max(1, last // 2)


@dataclass
class Family:
    """A family of sibling runs and every number its claims read, measured once (``measure``)."""

    kind: str                           # a key of FAMILY_KINDS
    trajs: list[Trajectory]
    geo: Geometry
    sp: Spectra
    mid: int                            # the claims' midpoint epoch (``midpoint_epoch``)
    pretrain: Trajectory | None         # the clones' shared pretraining path, when given
    progress: bool

    @property
    def how(self) -> FamilyKind:
        """How this kind of family is drawn, and which claims apply to it beyond the common ones."""
        return FAMILY_KINDS[self.kind]

    @property
    def start(self) -> str:
        """Where the runs' paths start: the init, or for clones the fork they start from."""
        if self.kind != "clone":
            return "init"
        return f"the fork (epoch {min(int(t.epochs[0]) for t in self.trajs)})"

    @cached_property
    def predictions(self) -> PredictionSpace:
        """The runs' logged predictions in function space, measured on first use (by the claims that read
        them); says why not when no run has them."""
        return measure_predictions(self.trajs, progress=self.progress)

    @property
    def paper_model(self) -> bool:
        """Whether the runs are of the paper's CNN on MNIST, so its numbers compare (not a recorded model)."""
        return self.kind != RECORDED


def measure(trajs: list[Trajectory], kind: str, pretrain: Trajectory | None, progress: bool) -> Family:
    geo = geometry(trajs, progress)
    return Family(kind, trajs, geo, spectra(trajs, kind, geo, progress), midpoint_epoch(trajs), pretrain,
                  progress)


@dataclass(frozen=True)
class PaperClaim:
    """One claim of the paper as ``pipeline`` checks it on a family: its metrics, its report rows, its
    figures and the files with the numbers behind them."""

    metrics: Callable[[Family], dict[str, float]] = lambda fam: {}
    claims: Callable[[Family], list[Claim]] = lambda fam: []
    figures: Callable[[Family, Path], list[Path]] = lambda fam, fig_dir: []   # PNGs written into fig_dir
    files: Callable[[Family, Path], list[Path]] = lambda fam, out_dir: []     # JSON written into out_dir
