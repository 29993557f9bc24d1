"""The prepared device check (benchmarks/gpu_check.sh), rehearsed end to end on the CPU with tiny sizes.

The same script that a session with a GPU runs through the device tool: set-up, smoke tests (all
skipped here: no CUDA), the three throughput benchmarks, and the `single` run through `mlflow run`
into a fresh sqlite store, its analysis and its export. What comes back from a device call is at
most 8 files, at most 2 folders down, named in letters, digits, '.', '_' and '-': checked too.
"""

import json
import re
import tarfile
from pathlib import Path

import pytest

from conftest import device_check, step_statuses

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"

pytestmark = pytest.mark.e2e

# A generous budget: the rehearsal checks what each step does, not how fast a shared CPU is.
TINY = {
    "DEVICE": "cpu",
    "BUDGET": "1500",
    "EPOCHS": "2",
    "TRAIN_SUBSET": "256",
    "WIDTH": "0.25",
    "N": "256",
    "REPEATS": "1",
    "COST_EPOCHS": "1",
    "ANALYSIS_ARGS": "-P surface_grid=5 -P interp_points=5 -P hessian_iters=5",
}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    return device_check(tmp_path_factory.mktemp("gpu-check"), TINY, timeout=1700)


def test_dry_run_succeeds_and_summarises_every_step(dry_run):
    p, out = dry_run
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-3000:]
    summary = (out / "summary.md").read_text()
    assert "| step | status | seconds | result |" in summary
    assert step_statuses(summary) == {s: "ok" for s in ("0", "1", "2a", "2b", "2c", "3a", "3b", "3c")}, (
        summary
    )
    assert "nothing here ran on a GPU" in summary
    assert "torch" in summary and "sizes: N=256" in summary


def test_smoke_tests_ran_and_were_skipped_without_cuda(dry_run):
    _, out = dry_run
    smoke = (out / "smoke.txt").read_text()
    assert "tests/test_cuda.py" in smoke and re.search(r"\d+ skipped", smoke)
    assert "needs a CUDA device" in smoke
    assert "every test skipped" in (out / "summary.md").read_text()


def test_throughput_tables_are_there(dry_run):
    _, out = dry_run
    tables = (out / "throughput.md").read_text()
    for needle in ("| one model, precision=fp32 |", "| 5 siblings batched, precision=fp32 |",
                   "weightspace Trainer.train_epoch, ", "weightspace + .item() per step",
                   "| 5 sequential Trainers", "| BatchedTrainer (vmap)", "processes x"):
        assert needle in tables, needle
    # the reference needs torchvision, which the project's environment has
    assert "| reference (torchvision MNIST + DataLoader)" in tables
    summary = (out / "summary.md").read_text()
    assert re.search(r"trainer fp32: \d+ samples/s = [\d.]+x the reference", summary)


def test_single_run_analysed_and_exported(dry_run):
    _, out = dry_run
    m = json.loads((out / "paper-scale" / "metrics.json").read_text())
    assert m["epochs"] == 2 and m["n_snapshots"] == 3 and m["device"] == "cpu" and m["width"] == 0.25
    assert m["n_train"] == 256 and "pca_evr_top2" in m and "null_evr_top2" in m
    assert (out / "paper-scale" / "report.md").read_text().startswith("# Claims report: single")
    with tarfile.open(out / "paper-scale" / "figures.tar") as t:
        names = t.getnames()
    assert any(n.endswith("pca_paths.png") for n in names) and all(n.startswith("figures") for n in names)
    log = (out / "paper-scale.txt").read_text()
    assert "plan: 2 of 2 epochs" in log and "succeeded" in log
    assert not list(out.rglob("*.npy")) and not list(out.rglob("*.safetensors"))  # never the snapshots


def test_outputs_fit_what_the_device_tool_brings_back(dry_run):
    _, out = dry_run
    files = [f for f in out.rglob("*") if f.is_file()]
    assert len(files) <= 8, files
    for f in files:
        rel = f.relative_to(out)
        assert len(rel.parts) <= 3, rel            # $OUT/a/b/file at most
        assert all(re.fullmatch(r"[A-Za-z0-9._-]+", part) for part in rel.parts), rel
        assert f.stat().st_size <= 16 * 2**20, rel


def test_single_run_is_cut_to_the_epochs_that_fit(tmp_path):
    """Step 3 alone with far more epochs than the budget holds: it measures one epoch, trains as
    many as fit before the time kept for the analysis, finishes them, and says so."""
    p, out = device_check(tmp_path, dict(DEVICE="cpu", STEPS="3", BUDGET="220", ANALYSIS_RESERVE="80",
                                         RUN_OVERHEAD="60", EPOCHS="100000", TRAIN_SUBSET="256", WIDTH="0.25",
                                         ANALYSIS_ARGS="-P probes=0"), timeout=600)
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-3000:]
    planned = int(re.search(r"plan: (\d+) of 100000 epochs", (out / "paper-scale.txt").read_text()).group(1))
    assert 1 <= planned < 100000
    summary = (out / "summary.md").read_text()
    assert f"only {planned} of the 100000 epochs fit" in summary
    assert f"{planned} of {planned} epochs logged" in summary
    assert json.loads((out / "paper-scale" / "metrics.json").read_text())["epochs"] == planned
