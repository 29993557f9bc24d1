"""Fort et al. 2019 ("Deep Ensembles: A Loss Landscape Perspective"): independently trained solutions
are different functions; they disagree on more test predictions than checkpoints of one run at the
same accuracy. Read from the runs' logged predictions (``Trajectory.predictions``): the disagreement
between siblings at every common snapshot, and the disagreement–accuracy plane of the final solutions
with the paper's two baselines, the same run at other epochs and the other (sibling) runs.

The analysis probe ``function_space`` asks the related question from the weights (it recomputes the
final solutions' predictions on the probe data and sets their disagreement against weight distance)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from weightspace.analysis.family import Family, PaperClaim
from weightspace.analysis.plotting import colour, legend, new_figure, save
from weightspace.analysis.prediction_family import ACC_TOL, PredictionSpace
from weightspace.analysis.report import NA, Claim, jsonable, na, pct

# Siblings' finals are "different functions" when they disagree at least 1.25x as much as a run's own
# checkpoint at the same accuracy, "the same function" at most 1/1.25x: the tolerance of "roughly the
# same" used across the experiments (cross_family.ACROSS_RATIO).
DIFFERENT_RATIO = 1.25
TEXT = "sibling solutions are different functions (Fort et al. 2019)"
PAPER = "independent runs disagree more than one run's checkpoints at equal accuracy"


def different_rule(ratio: float) -> str:
    """``ratio``: the siblings' mean final disagreement over the runs' own same-accuracy one (inf when
    only the siblings disagree)."""
    if math.isnan(ratio):
        return NA
    if ratio >= DIFFERENT_RATIO:
        return "reproduced"
    return "not reproduced" if ratio <= 1 / DIFFERENT_RATIO else "no clear difference"


_TAIL = {"reproduced": "siblings disagree more than a run with itself at the same accuracy",
         "not reproduced": "siblings agree more than a run with itself at the same accuracy",
         "no clear difference": "siblings disagree about as much as a run with itself at the same accuracy"}


def pairs(M: np.ndarray) -> np.ndarray:
    return M[np.triu_indices(len(M), 1)]


def same_run(ps: PredictionSpace) -> tuple[np.ndarray, np.ndarray]:
    """Per run: the epoch of the same-accuracy checkpoint (-1: none) and its disagreement with the final."""
    got = [ps.same_accuracy(r) for r in range(ps.n_runs)]
    return np.array([g[0] for g in got]), np.array([g[1] for g in got])


def na_reason(ps: PredictionSpace) -> str | None:
    if ps.reason:
        return ps.reason
    if ps.n_runs < 2:
        return f"needs 2 or more runs with predictions ({ps.coverage})"
    if not np.any(np.isfinite(same_run(ps)[1])):
        return (f"no run reaches its final accuracy within {100 * ACC_TOL:.1f} pts before its last snapshot "
                "(still improving): no same-accuracy checkpoint to compare")
    return None


def summary(ps: PredictionSpace) -> dict[str, float]:
    d, acc = pairs(ps.final_disagreement()), ps.final_accuracy()
    err = 1 - acc
    iu = np.triu_indices(ps.n_runs, 1)
    base = same_run(ps)[1]
    base = base[np.isfinite(base)]
    ep, M = ps.over_epochs()
    m = {"pred_accuracy_final_mean": float(acc.mean()),
         "pred_disagreement_final_mean": float(d.mean()), "pred_disagreement_final_min": float(d.min()),
         "pred_disagreement_final_max": float(d.max()),
         "pred_disagreement_final_over_error_mean":
             float(np.mean(d / np.maximum(0.5 * (err[iu[0]] + err[iu[1]]), 1e-12))),
         "pred_disagreement_same_run_mean": float(base.mean()) if len(base) else math.nan}
    b, dm = m["pred_disagreement_same_run_mean"], m["pred_disagreement_final_mean"]
    m["pred_disagreement_final_over_same_run"] = (dm / b if b > 0 else math.inf if b == 0 and dm > 0 else
                                                  math.nan)
    if len(ep):
        mean = np.array([pairs(x).mean() for x in M])
        m |= {"pred_disagreement_first_common": float(mean[0]),
              "pred_disagreement_last_common": float(mean[-1])}
    return m


def claim_different(ps: PredictionSpace) -> Claim:
    if ps.reason or ps.n_runs < 2:
        return Claim(TEXT, PAPER, NA, "-", na(na_reason(ps)))
    s = summary(ps)
    d = pairs(ps.final_disagreement())
    measured = (f"final solutions disagree on {pct(s['pred_disagreement_final_mean'])} ({pct(d.min())} to "
                f"{pct(d.max())}, {len(d)} pairs), {s['pred_disagreement_final_over_error_mean']:.2f}x their "
                f"mean error; accuracy {pct(s['pred_accuracy_final_mean'])}; {ps.coverage}")
    ep, base = same_run(ps)
    ok = np.isfinite(base)
    null = ("same run at its final accuracy: " +
            ", ".join(f"{pct(b)} (epoch {e})" for e, b in zip(ep[ok], base[ok])) if ok.any() else "-")
    why = na_reason(ps)
    if why:
        return Claim(TEXT, PAPER, measured, null, na(why))
    ratio = s["pred_disagreement_final_over_same_run"]
    rule = different_rule(ratio)
    if rule == NA:
        return Claim(TEXT, PAPER, measured, null,
                     na("no disagreement at all, between siblings or within runs"))
    return Claim(TEXT, PAPER, measured, null,
                 f"{rule}: {_TAIL[rule]} ({ratio:.3g}x) [threshold {DIFFERENT_RATIO}x for different, "
                 f"1/{DIFFERENT_RATIO}x for the same; same accuracy: the earliest checkpoint within "
                 f"{100 * ACC_TOL:.1f} pts of the run's final accuracy]")


# -- figures ----------------------------------------------------------------------------------------
def over_epochs_figure(ps: PredictionSpace, path: Path, title: str) -> Path:
    """Left: disagreement between siblings at every common snapshot, with the mean test error. Right:
    each run's snapshots against its own final solution (Fort et al.'s same-model baseline)."""
    fig, (ax, axr) = new_figure(2, w=6.2, h=4.8)
    ep, M = ps.over_epochs()
    R = ps.n_runs
    for i in range(R):
        for j in range(i + 1, R):
            ax.plot(ep, M[:, i, j], "-", lw=0.8, alpha=0.6, label=f"{ps.names[i]} vs {ps.names[j]}")
    if len(ep):
        ax.plot(ep, [pairs(x).mean() for x in M], "k-", lw=2.5, label="mean over pairs")
        rows = [[int(np.flatnonzero(e == x)[0]) for e in ps.epochs] for x in ep]
        err = [np.mean([1 - ps.accuracy[r][i[r]] for r in range(R)]) for i in rows]
        ax.plot(ep, err, "--", color="tab:red", label="mean test-subset error of the runs")
    ax.set(xlabel="epoch", ylabel="disagreement (fraction of test-subset predictions that differ)",
           title="Disagreement between sibling runs at each common epoch")
    for r in range(R):
        ax_r = ps.to_final(r)
        axr.plot(ps.epochs[r], ax_r, "-", color=colour(r, R), label=ps.names[r])
    axr.set(xlabel="epoch", ylabel="disagreement with the run's own final solution",
            title="Each run against its own final solution\n(the same model at different epochs)")
    for a in (ax, axr):
        a.grid(alpha=0.3)
        legend(a, fontsize=7, loc="best")
    fig.suptitle(title)
    return save(fig, path)


def plane_figure(ps: PredictionSpace, path: Path, title: str) -> Path:
    """Fort et al.'s disagreement–accuracy plane, with each run's final solution as the reference: its
    own checkpoints (the same model at different epochs) and the other runs' final solutions
    (trained apart: from other inits, other data orders or, for clones, after the fork), inside the
    bounds that the accuracies allow."""
    fig, (ax,) = new_figure(w=7.0, h=5.4)
    R, F, acc = ps.n_runs, ps.final_disagreement(), ps.final_accuracy()
    for r in range(R):
        c = colour(r, R)
        ax.plot(ps.to_final(r), ps.accuracy[r], ".-", color=c, lw=0.8, ms=4, alpha=0.7,
                label=f"{ps.names[r]}: its checkpoints vs its final")
        others = [q for q in range(R) if q != r]
        ax.plot(F[r, others], acc[others], "*", color=c, ms=12, mec="k",
                label=f"other runs' finals vs {ps.names[r]}'s final" if others else None)
    a_ref = float(acc.mean())
    a = np.linspace(0, 1, 201)
    ax.plot(np.abs(a - a_ref), a, ":", color="0.4",
            label=f"possible: |a − a_ref| ≤ disagreement ≤ (1 − a) + (1 − a_ref), a_ref {pct(a_ref)}")
    ax.plot(np.minimum(1, 2 - a - a_ref), a, ":", color="0.4")
    lo = min(float(np.min(np.concatenate(ps.accuracy))), a_ref) - 0.02
    ax.set(xlabel="disagreement with the reference final solution (fraction of test-subset predictions)",
           ylabel="test-subset accuracy", ylim=(max(0, lo), 1.005), xlim=(-0.01, None),
           title="Disagreement–accuracy plane of the final solutions (Fort et al. 2019)\n"
                 "*: the other runs' final solutions; lines: the same run at earlier epochs")
    ax.grid(alpha=0.3)
    legend(ax, fontsize=7, loc="best")
    fig.suptitle(title)
    return save(fig, path)


# -- the family's claim ------------------------------------------------------------------------------
def metrics(fam: Family) -> dict[str, float]:
    ps = fam.predictions
    return {} if ps.reason or ps.n_runs < 2 else summary(ps)


def claims(fam: Family) -> list[Claim]:
    return [claim_different(fam.predictions)]


def figures(fam: Family, fig_dir: Path) -> list[Path]:
    ps = fam.predictions
    if ps.reason or ps.n_runs < 2:
        return []
    what = f"Function space of the {fam.kind} runs (predictions on the test subset)"
    return [over_epochs_figure(ps, fig_dir / "pred_disagreement_over_epochs.png", what),
            plane_figure(ps, fig_dir / "pred_disagreement_accuracy.png", what)]


def files(fam: Family, out_dir: Path) -> list[Path]:
    """pred_disagreement.json: the series behind the figures (over epochs, per run against its final)."""
    ps = fam.predictions
    if ps.reason:
        return []
    ep, M = ps.over_epochs()
    rec = {"runs": ps.names, "without_predictions": ps.missing, "common_epochs": ep,
           "between_runs": {"mean": [pairs(x).mean() if ps.n_runs > 1 else math.nan for x in M], "matrix": M},
           "per_run": [{"run": n, "epochs": ps.epochs[r], "accuracy": ps.accuracy[r],
                        "disagreement_with_final": ps.to_final(r)} for r, n in enumerate(ps.names)],
           "final": {"disagreement": ps.final_disagreement(), "accuracy": ps.final_accuracy()}}
    path = out_dir / "pred_disagreement.json"
    path.write_text(json.dumps(jsonable(rec), indent=1))
    return [path]


CLAIM = PaperClaim(metrics, claims, figures, files)
