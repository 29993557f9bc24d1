"""The README's sibling workflow, as a user runs it: separate `mlflow run` launches with their
defaults, then the analysis with its defaults (probes on), then the README's Python block on the
store the workflow filled.

`mlflow run` logs every parameter shell-quoted, so the runs' ``data_dir`` is stored as ``''``
(or ``'/tmp/my data'``); the analysis must read it back as the entry point received it.
"""

import re
import shutil
import subprocess
import sys

import pytest
from test_doc_blocks import marked_run_by

from conftest import REPO
from weightspace.config import build_config, config_from_params
from weightspace.data import shipped_mnist_dir

pytestmark = pytest.mark.e2e

# The probe metrics an analysis with the default probes logs (one per probe family, and the
# training objective's gradient beside the eval-mode one).
PROBE_METRICS = ("disagreement_mean", "surface_loss_min", "grad_norm_final_run0",
                 "grad_norm_final_train_objective_run0")


def readme_blocks() -> tuple[str, str]:
    """The README's sibling-workflow block (bash) and its Python block, both marked for this file."""
    got = {b.lang: b.code for b in marked_run_by("tests/test_workflow_e2e.py", "README.md")}
    assert set(got) == {"bash", "python"}, "README.md lost a block this test runs"
    return got["bash"], got["python"]


def readme_block() -> str:
    return readme_blocks()[0]


def analysis_runs(store):
    return store.runs("tags.`weightspace.experiment` = 'analysis'")


def check_analysis(store, group: str, n_siblings: int):
    [a] = analysis_runs(store)
    assert a.info.status == "FINISHED"
    assert a.data.tags["weightspace.analysed_group"] == group
    assert len(a.data.tags["weightspace.source_run_ids"].split(",")) == n_siblings
    for k in PROBE_METRICS:
        assert k in a.data.metrics, k
    arts = {f.path for f in store.client().list_artifacts(a.info.run_id)}
    assert "report.md" in arts


def test_readme_group_is_the_one_its_parameters_give():
    # The README names the group literally; it must be what the runs compute and print.
    block = readme_block()
    flags = dict(re.findall(r"-P (\w+)=(\S+)", block.split("done")[0]))
    flags["shuffle_seed"] = "1"
    want = build_config("same_init", flags).group
    assert f"-P group={want}" in block


def test_readme_sibling_workflow_as_written(store):
    s = store  # the README's store: sqlite:///mlflow.db
    p = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_block()], cwd=REPO, env=s.env,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    siblings = s.runs("tags.`weightspace.experiment` = 'same_init'", status="FINISHED")
    assert len(siblings) == 3
    # what broke the analysis: the empty default stored quoted, read back as empty
    assert {r.data.params["data_dir"] for r in siblings} == {"''"}
    assert {config_from_params(r.data.params).data_dir for r in siblings} == {""}
    [group] = {r.data.tags["weightspace.group"] for r in siblings}
    assert f"group {group}" in p.stderr  # each run prints the group the README names
    check_analysis(s, group, 3)
    # the README's Python block, as written, against the store it has just filled
    p = subprocess.run(
        [sys.executable, "-c", readme_blocks()[1]],
        cwd=s.workdir,
        env=s.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-4000:]
    first, *_, last = p.stdout.strip().splitlines()
    assert first.startswith("(5, ") and "[0, 1, 2, 3, 4] same_init-shuffle1" in first and last == group, (
        p.stdout
    )


def test_sibling_workflow_with_a_data_dir_containing_a_space(store, tmp_path):
    data_dir = tmp_path / "my data"
    shutil.copytree(shipped_mnist_dir(), data_dir, ignore=shutil.ignore_patterns("README*"))
    params = {"epochs": 2, "snapshot_every": 1, "train_subset": 128, "width": 0.25, "batch_size": 64,
              "data_dir": str(data_dir)}
    for seed in (1, 2):
        store.mlflow_run("same_init", {**params, "shuffle_seed": seed})
    siblings = store.runs("tags.`weightspace.experiment` = 'same_init'", status="FINISHED")
    assert {r.data.params["data_dir"] for r in siblings} == {f"'{data_dir}'"}
    [group] = {r.data.tags["weightspace.group"] for r in siblings}
    store.mlflow_run("analysis", {"group": group})
    check_analysis(store, group, 2)


def test_mlflow_run_from_another_directory_with_a_relative_sqlite_uri_fails_in_one_line(store):
    """`mlflow run <repo>` started elsewhere with sqlite:///mlflow.db: the run is in *that* directory's
    store, the entry point (started in the project directory) would open another file."""
    before = (REPO / "mlflow.db").exists()
    env = {**store.env, "MLFLOW_TRACKING_URI": "sqlite:///mlflow.db"}  # store.workdir/mlflow.db, relatively
    p = subprocess.run(
        [
            str(shutil.which("mlflow", path=env["PATH"])),
            "run",
            str(REPO),
            "--env-manager",
            "local",
            "-e",
            "single",
            "-P",
            "dataset=digits",
            "-P",
            "epochs=1",
        ],
        cwd=store.workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode != 0
    [line] = [ln for ln in p.stderr.splitlines() if ln.startswith("weightspace: error:")]
    assert (
        "is not in sqlite:///mlflow.db" in line and str(REPO) in line and "sqlite:///$PWD/mlflow.db" in line
    )
    assert "Traceback" not in p.stderr
    [run] = store.runs()
    assert run.info.status == "FAILED"  # `mlflow run` ends its run FAILED in the store it made it in
    assert (REPO / "mlflow.db").exists() == before  # no empty store left in the checkout
