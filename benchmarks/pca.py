"""PCA of a (T=201, P=819,974) float32 trajectory: analysis.pca vs sklearn PCA(n_components=10).

The trajectory is a synthetic random walk written as T .npy files (as a run's snapshots
are). Every method starts from those files and ends with 10 explained-variance ratios:
* analysis.pca.trajectory_pca: streams the files in column chunks into the T x T Gram
  matrix, then eigh; "+ directions" adds the second pass that returns the 10 (P,) components
  (sklearn's components_ equivalent);
* sklearn: np.stack of the files, then PCA(10, svd_solver="full" | "randomized").fit.
Each method runs in a fresh subprocess per repeat; peak memory is that process's peak RSS
(VmHWM, reset just before the method) minus its RSS just before the method starts (imports and
interpreter excluded).

    python benchmarks/pca.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

METHODS = ("analysis.pca", "analysis.pca + directions", "sklearn full", "sklearn randomized")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def rss_bytes() -> int:
    return _status_kib("VmRSS") * 1024


def reset_peak() -> None:
    """Reset VmHWM (Linux >= 4.0), so the peak is the method's own, not the imports'."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_bytes() -> int:
    # Not ru_maxrss: after fork+exec it keeps the (large) parent's peak.
    return _status_kib("VmHWM") * 1024


def write_walk(directory: Path, T: int, P: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(P, dtype=np.float32) * 0.05
    files = []
    for t in range(T):
        if t:
            x += rng.standard_normal(P, dtype=np.float32) * np.float32(1e-3 / np.sqrt(t))
        files.append(directory / f"epoch_{t:04d}.npy")
        np.save(files[-1], x, allow_pickle=False)
    return files


def run_method(method: str, directory: Path) -> dict:
    files = sorted(directory.glob("epoch_*.npy"))
    if method.startswith("analysis"):
        from weightspace.analysis.pca import trajectory_pca
        from weightspace.trajectories import Trajectory
    else:
        from sklearn.decomposition import PCA
    base = rss_bytes()
    reset_peak()
    t0 = time.perf_counter()
    if method.startswith("analysis"):
        traj = Trajectory("bench", "bench", "single", 0, 0, np.arange(len(files)), files)
        res = trajectory_pca(traj, n_scores=10)
        evr = res.explained_variance_ratio[:10]
        if method.endswith("directions"):
            res.directions(10)
    else:
        X = np.stack([np.load(f, allow_pickle=False) for f in files])
        solver = method.split()[1]
        evr = PCA(n_components=10, svd_solver=solver, random_state=0).fit(X).explained_variance_ratio_
    secs = time.perf_counter() - t0
    return {"seconds": secs, "peak_bytes": peak_bytes() - base, "evr": [float(v) for v in evr]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", type=int, default=201)
    ap.add_argument("--P", type=int, default=819_974)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--methods", nargs="*", default=list(METHODS))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(run_method(args.worker, Path(args.dir))))
        return

    import _common as C

    print(f"machine: {C.machine()}")
    with tempfile.TemporaryDirectory(prefix="pca-bench-") as tmp:
        write_walk(Path(tmp), args.T, args.P)
        size = args.T * args.P * 4
        print(f"trajectory: {args.T} x {args.P} float32 = {size / 2**20:.0f} MiB in {args.T} .npy files\n")
        results: dict[str, list[dict]] = {m: [] for m in args.methods}
        for _ in range(args.repeats):  # interleaved, a fresh process per method and repeat
            for m in args.methods:
                out = subprocess.run([sys.executable, __file__, "--worker", m, "--dir", tmp],
                                     capture_output=True, text=True, check=True).stdout
                results[m].append(json.loads(out.strip().splitlines()[-1]))
    ref = "sklearn full" if "sklearn full" in results else args.methods[0]
    ref_s = C.med([r["seconds"] for r in results[ref]])
    ref_evr = np.array(results[ref][0]["evr"])
    print(C.row("method", "median s", "range s", f"speed-up vs {ref}", "peak MiB (median)",
                "peak / trajectory size", "max rel. diff of top-10 EVR vs " + ref))
    print(C.row(*["---"] * 7))
    for m, rs in results.items():
        secs = [r["seconds"] for r in rs]
        peak = C.med([r["peak_bytes"] for r in rs])
        evr = np.array(rs[0]["evr"])
        diff = float(np.max(np.abs(evr - ref_evr) / np.abs(ref_evr)))
        print(C.row(m, f"{C.med(secs):.2f}", C.spread(secs), f"{ref_s / C.med(secs):.1f}x",
                    f"{peak / 2**20:.0f}", f"{peak / size:.2f}", f"{diff:.1e}"))


if __name__ == "__main__":
    main()
