"""Step 5 of the prepared device check (``STEPS=5 bash benchmarks/gpu_check.sh``): the instability
sweep and what comes back of it, rehearsed on the CPU at a tiny size."""

import json
import tarfile

import pytest

from conftest import device_check, step_statuses

pytestmark = pytest.mark.e2e

TINY = {
    "DEVICE": "cpu",
    "BUDGET": "900",
    "STEPS": "5",
    "INSTAB_EPOCHS": "3",
    "SPAWN_EPOCHS": "0,1",
    "TRAIN_SUBSET": "256",
    "WIDTH": "0.25",
    "INSTAB_ARGS": "-P dataset=digits -P batch_size=64",
}


def test_the_sweep_comes_back_with_its_barriers_report_and_figure(tmp_path):
    p, out = device_check(tmp_path, TINY, timeout=1000)
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-3000:]
    summary = (out / "summary.md").read_text()
    assert step_statuses(summary) == {"0": "ok", "5": "ok"}, summary
    assert "FINISHED: barrier by k 0: " in summary and ", 1: " in summary, summary
    files = sorted(f.name for f in out.iterdir())
    assert files == ["instability.tar", "instability.txt", "log.txt", "summary.md"]
    with tarfile.open(out / "instability.tar") as tar:
        tar.extractall(tmp_path / "x", filter="data")
    got = tmp_path / "x" / "instability"
    assert sorted(f.name for f in got.iterdir()) == ["instability.md", "instability.png", "metrics.json"]
    m = json.loads((got / "metrics.json").read_text())
    assert m["status"] == "FINISHED" and m["params"]["spawn_epochs"] == "0,1"
    for k in (0, 1):
        assert 0.0 <= m["metrics"][f"instability_aligned_k{k}"] <= 1.0
        assert -1.0 <= m["metrics"][f"instability_k{k}"] <= 1.0
