"""Training stays bitwise identical to the trajectory recorded before the redesign (c448a6d).

The reference runs, from a checkout of c448a6d (see data/bitwise/README.md):

    mlflow run <c448a6d> --env-manager local -e single -P epochs=2 -P snapshot_every=1 \
        -P train_subset=256 -P width=0.25 -P batch_size=64 -P device=cpu

The thread count changes the float summation order: OMP_NUM_THREADS=1 and =2 agree at epoch 0 but
differ by 1 ulp-sized amounts (max 1.5e-8) in about 1,000 of the 51,929 weights after epoch 1. So
there is one reference per thread count, and the test forces the count in the subprocess.

Bitwise equality is only promised on the machine a reference was recorded on: oneDNN and MKL pick
their kernels by CPU vendor and microarchitecture, and ATen by its dispatch capability, so another
CPU (or a forced capability) rounds differently. ``data/bitwise/machine.json`` records that machine
(vendor, family, model, ATen capability, torch version, threads, kernel-selecting environment). On
a matching machine the comparison is bitwise; anywhere else it is a rounding-level tolerance
(``tolerance``), and the test says which one it made.
"""

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parent / "data" / "bitwise"
PARAMS = {
    "epochs": 2,
    "snapshot_every": 1,
    "train_subset": 256,
    "width": 0.25,
    "batch_size": 64,
    "device": "cpu",
}
REFERENCES = {1: "single_e2_s256_w025_b64_omp1.npz", 2: "single_e2_s256_w025_b64.npz"}
EPOCHS = ["epoch_0000", "epoch_0001", "epoch_0002"]
STEPS_PER_EPOCH = math.ceil(PARAMS["train_subset"] / PARAMS["batch_size"])
EPS32 = float(np.finfo(np.float32).eps)
# Environment variables that select other kernels on the same CPU; none was set for the references.
KERNEL_ENV = (
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "MKL_ENABLE_INSTRUCTIONS",
    "MKL_CBWR",
    "MKL_DEBUG_CPU_TYPE",
)
# What must agree for bitwise equality to be promised (model_name is only for people).
MATCH = ("vendor_id", "cpu_family", "model", "capability", "torch", "threads", "kernel_env")
# Forces kernels other than this CPU's best: what an AVX2-only machine runs.
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}

# This machine as a training subprocess with ``env`` sees it.
PROBE = f"""
import json, os, torch
cpu = {{}}
try:
    for line in open("/proc/cpuinfo"):
        k, _, v = line.partition(":")
        cpu.setdefault(k.strip(), v.strip())
except OSError:
    pass
print(json.dumps({{"vendor_id": cpu.get("vendor_id"), "cpu_family": cpu.get("cpu family"),
                  "model": cpu.get("model"),
                  "model_name": cpu.get("model name"), "capability": torch.backends.cpu.get_cpu_capability(),
                  "torch": torch.__version__, "threads": torch.get_num_threads(),
                  "kernel_env": {{k: os.environ[k] for k in {KERNEL_ENV!r} if k in os.environ}}}}))
"""


def this_machine(env: dict) -> dict:
    p = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout)


def recorded_machine(threads: int) -> dict:
    return json.loads((DATA / "machine.json").read_text())[REFERENCES[threads]]


def mismatch(here: dict, recorded: dict) -> list[str]:
    """The fields that differ from the recording machine: empty when bitwise equality is promised."""
    return [
        f"{k} {here.get(k)!r} (recorded {recorded.get(k)!r})" for k in MATCH if here.get(k) != recorded.get(k)
    ]


def tolerance(want: np.ndarray, epoch: int) -> np.ndarray:
    """Per weight: 2 n eps32 (|w| + rms of w's tensor), n the SGD steps the reference has taken.

    Another kernel rounds each step's update differently by about one ulp of the weight (the
    update is tiny next to the weight), and such differences add up over the steps; the tensor's
    rms keeps the bound meaningful for weights near zero. Measured |diff|/bound: at most 0.10 for
    AVX2 kernels forced on the recording CPU, 0.08 between the two thread counts; the Zen 5 of
    issue 33 differed by 7.45e-9 after epoch 1, where the bound is at least 1.85e-8. A learning
    rate off by 0.1%, or one epoch too few, exceeds it many times over (tested below).
    """
    layout = json.loads((DATA / "layout.json").read_text())
    w = want.astype(np.float64)
    scale = np.empty_like(w)
    for p in layout["params"]:
        part = slice(p["offset"], p["offset"] + p["numel"])
        scale[part] = np.sqrt(np.mean(w[part] ** 2))
    return 2 * max(1, epoch * STEPS_PER_EPOCH) * EPS32 * (np.abs(w) + scale)


def compare(got: np.ndarray, want: np.ndarray, epoch: int, bitwise: bool) -> str | None:
    """None when ``got`` passes; otherwise what differs, and by how much."""
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    if bitwise:
        n = int(np.count_nonzero(got != want))
        return None if n == 0 else f"{n} of {got.size} weights differ, max |diff| {diff.max():.3g} (bitwise)"
    bound = tolerance(want, epoch)
    over = int(np.count_nonzero(~(diff <= bound)))
    return (
        None
        if over == 0
        else (
            f"{over} of {got.size} weights beyond the tolerance, max |diff| {diff.max():.3g}, "
            f"max |diff|/tolerance {np.max(diff / bound):.3g}"
        )
    )


def check_run(store, threads: int, env: dict) -> str:
    """Train the reference configuration with ``env`` and compare; return the comparison made."""
    store.env["OMP_NUM_THREADS"] = str(threads)
    store.env.pop("MKL_NUM_THREADS", None)
    store.env.update(env)  # (kernel choices set for the whole suite stay: the probe sees them too)
    here, recorded = this_machine(store.env), recorded_machine(threads)
    differs = mismatch(here, recorded)
    how = (
        "bitwise"
        if not differs
        else (
            "within the rounding-level tolerance 2 n eps32 (|w| + rms of its tensor), "
            "not bitwise, because this machine differs from the recording one: " + "; ".join(differs)
        )
    )
    store.mlflow_run("single", PARAMS)
    [run] = store.runs()
    assert run.info.status == "FINISHED"
    out = store.workdir / "downloaded"
    out.mkdir()
    local = Path(store.client().download_artifacts(run.info.run_id, "trajectory", str(out)))

    ref = np.load(DATA / REFERENCES[threads], allow_pickle=False)
    assert sorted(ref.files) == EPOCHS
    seen = []
    for epoch, key in enumerate(EPOCHS):
        got = np.load(local / f"{key}.npy", allow_pickle=False)
        want = ref[key]
        assert got.dtype == want.dtype == np.float32 and got.shape == want.shape, (key, got.dtype, got.shape)
        failure = compare(got, want, epoch, bitwise=not differs)
        assert failure is None, f"{key} (OMP_NUM_THREADS={threads}) compared {how}: {failure}"
        diff = np.abs(got.astype(np.float64) - want)
        seen.append(f"{key}: {np.count_nonzero(diff)} differ, max |diff| {diff.max():.3g}, "
                    f"max |diff|/tolerance {np.max(diff / tolerance(want, epoch)):.3g}")
    assert json.loads((local / "layout.json").read_text()) == json.loads((DATA / "layout.json").read_text())
    print(f"OMP_NUM_THREADS={threads}: compared {how}\n" + "\n".join(seen))
    if differs:
        warnings.warn(f"OMP_NUM_THREADS={threads}: trajectory compared {how}", stacklevel=2)
    return "bitwise" if not differs else "tolerance"


@pytest.mark.e2e
@pytest.mark.parametrize("threads", sorted(REFERENCES))
def test_single_run_matches_the_pre_redesign_trajectory(store, threads):
    check_run(store, threads, {})


@pytest.mark.e2e
def test_forced_avx2_kernels_match_the_reference_within_the_tolerance(store):
    # What an AVX2-only CPU runs, on any x86 CPU: the fallback comparison is exercised everywhere.
    assert check_run(store, 1, AVX2) == "tolerance"


def test_the_tolerance_admits_another_summation_order_and_rejects_a_changed_learning_rate():
    one = np.load(DATA / REFERENCES[1], allow_pickle=False)
    two = np.load(DATA / REFERENCES[2], allow_pickle=False)
    for epoch, key in enumerate(EPOCHS):
        # the two references differ by the thread count's summation order only
        assert compare(two[key], one[key], epoch, bitwise=False) is None, key
    # the largest difference issue 33 saw on an AMD Zen 5 after epoch 1, allowed anywhere in the vector
    assert tolerance(one["epoch_0001"], 1).min() > 7.45e-9
    assert compare(two["epoch_0002"], one["epoch_0002"], 2, bitwise=True) is not None
    theta0 = one["epoch_0000"].astype(np.float64)
    for epoch, key in enumerate(EPOCHS[1:], start=1):
        # lr 0.1% larger moves every weight 0.1% further from θ0 (to first order)
        faster = (theta0 + 1.001 * (one[key] - theta0)).astype(np.float32)
        assert compare(faster, one[key], epoch, bitwise=False) is not None, key
        # one epoch short
        assert compare(one[EPOCHS[epoch - 1]], one[key], epoch, bitwise=False) is not None, key


def test_the_machine_record_describes_each_reference():
    for threads, name in REFERENCES.items():
        rec = recorded_machine(threads)
        assert set(MATCH) <= set(rec) and rec["threads"] == threads and rec["kernel_env"] == {}, name
    here = {k: v for k, v in recorded_machine(1).items()}
    assert mismatch(here, recorded_machine(1)) == []
    assert mismatch({**here, "vendor_id": "AuthenticAMD", "cpu_family": "26"}, recorded_machine(1)) == [
        "vendor_id 'AuthenticAMD' (recorded 'GenuineIntel')", "cpu_family '26' (recorded '6')"]
    assert mismatch({**here, "kernel_env": {"ATEN_CPU_CAPABILITY": "avx2"}}, recorded_machine(1))
