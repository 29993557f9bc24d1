"""Step 4 of the prepared device check (``STEPS=4 bash benchmarks/gpu_check.sh``): the paper's whole
suite as one batch of models, its analyses and the export, rehearsed on the CPU at a tiny size.

What comes back from a device call is at most 8 files, 2 folders down: the export travels as one
tar, with a folder per analysis (``single``, the three families, ``families``).
"""

import json
import re
import tarfile

import pytest

from conftest import device_check, step_statuses

pytestmark = pytest.mark.e2e

# A generous budget: the rehearsal checks what each step does, not how fast a shared CPU is.
TINY = {
    "DEVICE": "cpu",
    "BUDGET": "1500",
    "STEPS": "4",
    "EPOCHS": "3",
    "TRAIN_SUBSET": "256",
    "WIDTH": "0.25",
    "N": "256",
    "REPLICAS": "2",
    "PRETRAIN_EPOCHS": "1",
    "SUITE_K": "3",
}
FAMILIES = ("single", "different_init", "same_init", "clone", "families")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    return device_check(tmp_path_factory.mktemp("gpu-suite"), TINY, timeout=1700)


def test_every_step_of_the_suite_succeeds_and_is_summarised(dry_run):
    p, out = dry_run
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-3000:]
    summary = (out / "summary.md").read_text()
    assert step_statuses(summary) == {s: "ok" for s in ("0", "4a", "4b", "4c")}, summary
    assert "step capture not timed" in summary and "step_capture=0 chosen" in summary   # no CUDA here
    assert re.search(r"8 of 8 training runs FINISHED; \d+ model-samples/s", summary), summary
    assert "nothing here ran on a GPU" in summary
    assert sorted(f.name for f in out.iterdir()) == ["log.txt", "suite.tar", "suite.txt", "summary.md"]


def test_the_export_has_a_folder_per_analysis_with_its_metrics_report_and_figures(dry_run, tmp_path):
    _, out = dry_run
    with tarfile.open(out / "suite.tar") as tar:
        tar.extractall(tmp_path, filter="data")
    suite = tmp_path / "suite"
    assert sorted(d.name for d in suite.iterdir()) == sorted(FAMILIES)
    for family in FAMILIES:
        d = suite / family
        m = json.loads((d / "metrics.json").read_text())
        assert m["family"] == family and m["params"]["siblings"] == "batched"
        assert (d / "report.md").read_text().startswith("#") or (d / "report.md").stat().st_size > 0
        assert list((d / "figures").glob("*.png")), family
        # function space at paper scale too: every run of the batch logged its predictions
        if family == "families":
            assert len(m["source_run_ids"]) == 3 * 2 and "families_final_pairwise_dist_ratio" in m
            assert "families_inpca_evr_top2" in m and (d / "figures" / "inpca_all_families.png").is_file()
        else:
            assert "pca_evr_top2" in m and len(m["source_run_ids"]) == (1 if family == "single" else 2)
            assert "inpca_evr_top2" in m and (d / "figures" / "inpca_paths.png").is_file()
