"""Interpolation probe: the loss and error along straight lines in weight space.

Two kinds of line: each run's start -> final (Goodfellow et al. 2015: is the loss monotone
along it? The start is the init, or the fork for a clone) and each pair of sibling final
solutions (Frankle et al. 2020: is there a barrier between them, i.e. do they lie in
different basins?). Each pair is drawn twice: as recorded, and with the second solution's
hidden units permuted to match the first (weight matching, ``weightspace.analysis.alignment``),
which computes the same function but may lie much closer: a barrier that vanishes after
alignment separates two copies of one basin that differ only by the order of their units.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from weightspace.analysis.alignment import align
from weightspace.analysis.plotting import colour, legend, new_figure, save_to
from weightspace.analysis.probes.base import Probe, ProbeInputs, common_start
from weightspace.analysis.report import Claim

# -- the line and its barriers ------------------------------------------------------------------
# The core takes a generic ``evaluate(thetas (K, P)) -> {name: (K,) values}``, so the same code runs
# on a closed-form quadratic in the tests and on any model in the probe.
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
    return Curve(name, a, {k: np.asarray(v, dtype=np.float64)
                           for k, v in evaluate(line(theta_a, theta_b, a)).items()})


@dataclass
class InterpolationResult:
    names: list[str]
    points: int                         # α values per line
    own: list[Curve]                    # per run: start -> final
    pairs: list[tuple[int, int]]        # sibling pairs i < j
    between: list[Curve]                # per pair: final_i -> final_j
    # per run: the epoch of its first snapshot (0, or the fork)
    start_epochs: list[int] = field(default_factory=list)
    dist: np.ndarray = field(default_factory=lambda: np.zeros(0))   # per pair: ‖θ_i − θ_j‖, final weights
    aligned: list[Curve] = field(default_factory=list)   # per pair: final_i -> π(final_j); empty: not aligned
    aligned_dist: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per pair: ‖θ_i − π(θ_j)‖
    align_na: str = ""                  # why the pairs were not aligned ("": aligned, or alignment off)

    @property
    def monotone(self) -> list[bool]:
        """Per run: the train loss decreases monotonically from start to final."""
        return [is_monotone_decreasing(c.values["train_loss"]) for c in self.own]

    @property
    def monotone_test(self) -> list[bool]:
        return [is_monotone_decreasing(c.values["test_loss"]) for c in self.own]

    def own_barriers(self, quantity: str, kind: str) -> np.ndarray:
        """Per run, the ``kind`` ("frankle" or "chord") barrier of ``quantity`` (e.g. "train_loss")."""
        return np.array([c.barriers()[f"{quantity}/{kind}"] for c in self.own])

    def pair_barriers(self, quantity: str, kind: str, aligned: bool = False) -> np.ndarray:
        """Per pair (in ``pairs`` order), the ``kind`` barrier of ``quantity``, between the recorded
        solutions or (``aligned``) after aligning the second to the first."""
        curves = self.aligned if aligned else self.between
        return np.array([c.barriers()[f"{quantity}/{kind}"] for c in curves])


def interpolation(inp: ProbeInputs) -> InterpolationResult:
    """Every run's start -> final line and every pair's final -> final line, ``interp_points`` α each;
    with ``align``, also every pair's line after permutation alignment."""
    n, names, M = inp.options.interp_points, inp.names, len(inp.trajs)
    pairs = list(combinations(range(M), 2))
    spec, align_na = inp.permutations() if inp.options.align and pairs else (None, "")
    do_align = spec is not None
    bar = tqdm(total=M + len(pairs) * (1 + do_align), desc="interpolation", disable=not inp.progress)
    own, between, aligned = [], [], []
    for i, tr in enumerate(inp.trajs):
        own.append(interpolate(inp.theta(i, 0), inp.final(i), inp.evaluate, n,
                               f"{tr.name}: epoch {tr.epochs[0]} -> {tr.epochs[-1]}"))
        bar.update()
    finals = [inp.final(i) for i in range(M)]
    host = [f.cpu().numpy() for f in finals]
    dist, adist = np.zeros(len(pairs)), np.zeros(len(pairs))
    for k, (i, j) in enumerate(pairs):
        between.append(interpolate(finals[i], finals[j], inp.evaluate, n, f"{names[i]} -> {names[j]}"))
        dist[k] = np.linalg.norm(host[i].astype(np.float64) - host[j].astype(np.float64))
        bar.update()
        if do_align:
            bj, _ = align(host[i], host[j], inp.model.layout, seed=inp.options.seed, spec=spec)
            adist[k] = np.linalg.norm(host[i].astype(np.float64) - bj.astype(np.float64))
            aligned.append(interpolate(finals[i], inp.model.theta(bj), inp.evaluate, n,
                                       f"{names[i]} -> {names[j]} (aligned)"))
            bar.update()
    bar.close()
    return InterpolationResult(names, n, own, pairs, between, [int(t.epochs[0]) for t in inp.trajs], dist,
                               aligned, adist if do_align else np.zeros(0), align_na)


# -- metrics ---------------------------------------------------------------------------------------
# Curve quantities -> metric infix; the bare one (test error) is the headline barrier.
QUANTITIES = {"test_error": "", "train_error": "train_", "train_loss": "loss_", "test_loss": "test_loss_"}
KINDS = ("frankle", "chord")


def _barriers(curve: Curve, prefix: str, suffix: str, tag: str = "") -> dict[str, float]:
    b = curve.barriers()
    return {f"{prefix}{infix}barrier_{tag}{kind}{suffix}": b[f"{q}/{kind}"]
            for q, infix in QUANTITIES.items() for kind in KINDS}


def metrics(r: InterpolationResult) -> dict[str, float]:
    m: dict[str, float] = {}
    for i, (cur, mono, mono_test) in enumerate(zip(r.own, r.monotone, r.monotone_test)):
        m |= _barriers(cur, "interp_", f"_run{i}")
        m[f"interp_monotone_run{i}"] = float(mono)
        m[f"interp_monotone_test_run{i}"] = float(mono_test)
    for (i, j), cur in zip(r.pairs, r.between):
        m |= _barriers(cur, "pair_", f"_run{i}_run{j}")
    # after permutation alignment: pair_barrier_aligned_frankle_run0_run1, ..._mean, and the distances
    for (i, j), cur, d in zip(r.pairs, r.aligned, r.aligned_dist):
        m |= _barriers(cur, "pair_", f"_run{i}_run{j}", "aligned_")
        m[f"aligned_final_pairwise_dist_run{i}_run{j}"] = float(d)
    m["interp_points"] = float(r.points)
    m["interp_monotone_frac"] = float(np.mean(r.monotone))
    for aligned, tag in ((False, ""), (True, "aligned_")):
        if not r.pairs or (aligned and not r.aligned):
            continue
        for q, infix in QUANTITIES.items():
            for kind in KINDS:
                v = r.pair_barriers(q, kind, aligned)
                m[f"pair_{infix}barrier_{tag}{kind}_mean"] = float(np.mean(v))
                m[f"pair_{infix}barrier_{tag}{kind}_max"] = float(np.max(v))
    if r.aligned:
        m["aligned_final_pairwise_dist_mean"] = float(np.mean(r.aligned_dist))
    return m


# -- claims ----------------------------------------------------------------------------------------
# Frankle et al. 2020 call two solutions linearly connected when the error barrier is
# within 2% (their "stable" threshold); we use the same line for "different basins".
BARRIER_THRESHOLD = 0.02


def basins_verdict(raw: float, aligned: float | None) -> str:
    """Different basins from the mean test-error barrier between sibling solutions (Frankle's
    definition), as recorded and (when measured) after permutation alignment."""
    th = (f" [threshold {BARRIER_THRESHOLD}: Frankle et al.'s line for linearly connected; "
          f"no null: a barrier belongs to the given pair of solutions]")
    if raw <= BARRIER_THRESHOLD:
        return f"not supported: linearly connected (error barrier within {BARRIER_THRESHOLD:.0%})" + th
    if aligned is None:
        return "supported: error barriers separate the solutions (not aligned)" + th
    if aligned <= BARRIER_THRESHOLD:
        return ("different basins only up to a permutation: a barrier separates the recorded solutions, "
                "but after aligning their hidden units they are linearly connected") + th
    return "supported: error barriers separate the solutions, even after permutation alignment" + th


def monotone_verdict(mono: list[bool], points: int) -> str:
    """Goodfellow et al.'s observation, per run: the train loss never rises along the line."""
    rule = (f" [rule: the train loss falls or stays between each pair of neighbouring points of the line, "
            f"{points} points; no null: the paper says the line may be monotone, an observation, not a "
            f"test against chance]")
    if all(mono):
        return "reproduced" + rule
    return ("partly reproduced" if any(mono) else "not reproduced") + rule


def claims(r: InterpolationResult) -> list[Claim]:
    """Monotone start -> final lines (Goodfellow et al.); barriers between siblings (Frankle et al.)."""
    mono, M = r.monotone, len(r.own)
    start = common_start(r.start_epochs or [0])
    claims = [Claim(
        f"the line from {start} to the final weights decreases the loss monotonically (may)",
        "may be monotone",
        f"{int(sum(mono))}/{M} runs monotone in train loss; max train-loss bump above chord "
        f"{r.own_barriers('train_loss', 'chord').max():.3g}", "-",
        monotone_verdict(mono, r.points))]
    if r.pairs:
        fr = r.pair_barriers("test_error", "frankle")
        ch = r.pair_barriers("test_error", "chord").mean()
        lch = r.pair_barriers("train_loss", "chord").mean()
        measured = (f"test-error barrier mean {fr.mean():.3f} (max {fr.max():.3f}, chord {ch:.3f}); "
                    f"train-loss barrier above chord {lch:.3g}; {len(r.pairs)} pairs, "
                    f"{int(np.sum(fr > BARRIER_THRESHOLD))} above {BARRIER_THRESHOLD}")
        al = None
        if r.aligned:
            fa = r.pair_barriers("test_error", "frankle", aligned=True)
            al = float(fa.mean())
            measured += (f"; after permutation alignment: barrier mean {al:.3f} (max {fa.max():.3f}, "
                         f"{int(np.sum(fa > BARRIER_THRESHOLD))} above), "
                         f"distance {r.aligned_dist.mean():.4g} "
                         f"vs {r.dist.mean():.4g} unaligned")
        elif r.align_na:
            measured += f"; permutation alignment n/a: {r.align_na}"
        verdict = (basins_verdict(float(fr.mean()), al) if np.isfinite(fr.mean()) else
                   "n/a: no error metric (a model that is not a classifier needs its probe function to "
                   "give one)")
        claims.append(Claim("sibling solutions lie in different basins",
                            "different basins (from distances alone)",
                            measured, "-", verdict))
    return claims


# -- figures ---------------------------------------------------------------------------------------
ALPHA_LABEL = "α  (θ = (1−α)·start + α·end)"


def figures(r: InterpolationResult, out: Path) -> list[Path]:
    figs = [_curves(r.own, out, "interp_init_final.png", f"{common_start(r.start_epochs or [0])} -> final")]
    if r.pairs:
        figs.append(_curves(r.between, out, "interp_pairs.png", "between sibling final solutions"))
        figs.append(_barrier_heatmap(r, out))
    if r.aligned:
        figs.append(_aligned(r, out))
    return figs


def _aligned(r: InterpolationResult, out: Path) -> Path:
    """Each pair's line as recorded (solid) and after permutation alignment (dashed), and the distances."""
    fig, (axl, axe, axd) = new_figure(3, w=5.2, h=4.2)
    for k, ((i, j), raw, al) in enumerate(zip(r.pairs, r.between, r.aligned)):
        col, name = colour(k, len(r.pairs)), f"{r.names[i]} / {r.names[j]}"
        for cur, ls, how in ((raw, "-", "recorded"), (al, "--", "aligned")):
            axl.plot(cur.alphas, cur.values["train_loss"], ls, color=col, label=f"{name} ({how})")
            axe.plot(cur.alphas, cur.values["test_error"], ls, color=col, label=f"{name} ({how})")
    axl.set_yscale("log")
    axl.set(xlabel=ALPHA_LABEL, ylabel="train cross-entropy loss (probe subset)",
            title="Loss between sibling solutions:\nrecorded (solid) vs permutation-aligned (dashed)")
    axe.set(xlabel=ALPHA_LABEL, ylabel="test error rate (probe subset)",
            title="Test error between sibling solutions:\nrecorded (solid) vs permutation-aligned (dashed)")
    legend(axe, fontsize=6, loc="best")
    x = np.arange(len(r.pairs))
    axd.bar(x - 0.2, r.dist, 0.4, color="C0", label="recorded ‖θ_i − θ_j‖")
    axd.bar(x + 0.2, r.aligned_dist, 0.4, color="C1", label="aligned ‖θ_i − π(θ_j)‖")
    axd.set_xticks(x, [f"{r.names[i]} / {r.names[j]}" for i, j in r.pairs], rotation=45, ha="right",
                   fontsize=6)
    axd.set_ylim(0, 1.3 * max(r.dist.max(), r.aligned_dist.max(), 1e-30))
    axd.set(xlabel="sibling pair", ylabel="L2 distance between final weights (parameter units)",
            title="Distance before and after weight matching")
    legend(axd, fontsize=7, loc="upper center")
    return save_to(fig, out, "interp_aligned.png")


def _curves(curves: Sequence[Curve], out: Path, name: str, title: str) -> Path:
    fig, (axl, axe) = new_figure(2, w=5.5, h=4)
    for k, cur in enumerate(curves):
        col = colour(k, len(curves))
        for split, ls in (("train", "-"), ("test", "--")):
            axl.plot(cur.alphas, cur.values[f"{split}_loss"], ls, color=col, label=f"{cur.name} ({split})")
            axe.plot(cur.alphas, cur.values[f"{split}_error"], ls, color=col, label=f"{cur.name} ({split})")
    axl.set_yscale("log")
    axl.set(xlabel=ALPHA_LABEL, ylabel="cross-entropy loss", title=f"Loss along the line, {title}")
    axe.set(xlabel=ALPHA_LABEL, ylabel="error rate", title=f"Error along the line, {title}")
    legend(axe, fontsize=6, loc="best")
    return save_to(fig, out, name)


def _barrier_heatmap(r: InterpolationResult, out: Path) -> Path:
    M = len(r.names)
    fig, axes = new_figure(2, w=5.5, h=4.5)
    for ax, kind in zip(axes, ("frankle", "chord")):
        mat = np.full((M, M), np.nan)
        for (i, j), v in zip(r.pairs, r.pair_barriers("test_error", kind)):
            mat[i, j] = mat[j, i] = v
        im = ax.imshow(mat, cmap="magma")
        for i, j in r.pairs:
            for a, b in ((i, j), (j, i)):
                light = mat[a, b] > np.nanmean(mat)      # readable on both ends of the colormap
                ax.text(b, a, f"{mat[a, b]:.3f}", ha="center", va="center", fontsize=7,
                        color="k" if light else "w")
        ax.set_xticks(range(M), r.names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(M), r.names, fontsize=7)
        what = "Frankle: max − endpoint mean" if kind == "frankle" else "above the chord"
        ax.set_title(f"test-error barrier ({what})", fontsize=9)
        fig.colorbar(im, ax=ax, label="error-rate barrier")
    return save_to(fig, out, "interp_barrier_heatmap.png")


PROBE = Probe("interp", lambda o, n: o.interp_points > 0, interpolation, metrics, figures, claims)
