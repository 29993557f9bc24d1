"""Issue 32: a run in a shared tracking store is data, never code, and is read only from its own place.

Every attack is written as someone with write access to the store would do it: runs made with
plain ``MlflowClient`` calls and hand-made artifacts, never through weightspace's writers. The
analysis then runs as its user runs it (``mlflow run . -e analysis`` or the Python API).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from test_data import _write_idx_dir
from torch import nn

import weightspace
from conftest import REPO, TINY, end_active_runs, make_store, use_store
from weightspace.config import build_config
from weightspace.model import build_model
from weightspace.params import ParamError
from weightspace.tracking.runs import TrajectoryError, trajectory
from weightspace.workflows.analysis_runs import AnalysisOptions, run_analysis
from weightspace.workflows.probe_hook import probe_data


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One store for the in-process attacks (a schema costs seconds); each uses groups of its own."""
    return make_store("sqlite", tmp_path_factory.mktemp("security"))


@pytest.fixture
def env(shared, monkeypatch):
    """The Python API logs into and reads the shared store."""
    yield use_store(shared, monkeypatch)
    end_active_runs()


def fresh(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def snapshots(epochs, size: int = 40, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {e: rng.standard_normal(size).astype(np.float32) for e in epochs}


def entry(path: Path, epoch: int) -> dict:
    blob = path.read_bytes()
    return {"epoch": epoch, "sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob)}


def attack(
    store,
    tmp: Path,
    *,
    group: str,
    snaps: dict[int, np.ndarray],
    params: dict[str, str] | None = None,
    experiment: str = "recorded",
    layout: object = None,
    edit=None,
    raw_manifest: bytes | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """A FINISHED run logged by hand: its snapshots, a manifest as the writer would make it
    (then changed by ``edit``, or replaced by ``raw_manifest``), and ``layout`` as layout.json."""
    c = store.client()
    rid = c.create_run(
        store.experiment_id(),
        tags={"weightspace.group": group, "weightspace.experiment": experiment, **(tags or {})},
    ).info.run_id
    for k, v in (params or {}).items():
        c.log_param(rid, k, v)
    d = tmp / uuid.uuid4().hex
    d.mkdir(parents=True)
    files = {}
    for e, arr in snaps.items():
        p = d / f"epoch_{e:04d}.npy"
        np.save(p, arr)
        files[p.name] = entry(p, e)
        c.log_artifact(rid, str(p), "trajectory")
    manifest = {
        "format": "weightspace-trajectory-1",
        "complete": True,
        "epochs": sorted(snaps),
        "files": files,
    }
    if edit:
        edit(manifest)
    (d / "manifest.json").write_bytes(
        raw_manifest if raw_manifest is not None else json.dumps(manifest).encode()
    )
    c.log_artifact(rid, str(d / "manifest.json"), "trajectory")
    if layout is not None:
        (d / "layout.json").write_text(json.dumps(layout))
        c.log_artifact(rid, str(d / "layout.json"), "trajectory")
    c.set_terminated(rid, "FINISHED")
    return rid


def analysis_run(store, group: str):
    (a,) = store.runs(f"tags.`weightspace.analysed_group` = '{group}'")
    return a


def report_of(store, run, tmp: Path) -> str:
    return Path(store.client().download_artifacts(run.info.run_id, "report.md", str(tmp))).read_text()


def assert_refused(p, needles, store=None):
    """One line naming what was refused, a non-zero exit, no traceback, the analysis run FAILED."""
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("weightspace: error:")]
    assert p.returncode != 0 and len(lines) == 1, p.stderr[-3000:]
    assert all(n in lines[0] for n in needles), (needles, lines[0])
    assert "Traceback" not in p.stderr
    if store is not None:
        (a,) = store.runs("tags.`weightspace.experiment` = 'analysis'")
        assert a.info.status == "FAILED" and all(n in a.data.tags["weightspace.error"] for n in needles)


# -- 1. code execution ----------------------------------------------------------------------------

@pytest.mark.e2e
def test_a_runs_probe_param_is_never_imported_and_its_command_never_runs(store, tmp_path):
    """The issue's attack as written: probe=os:system and a layout.json that is the command."""
    marker = tmp_path / "PWNED"
    rid = attack(store, tmp_path, group="evil", snaps=snapshots([0, 1, 2]), params={"probe": "os:system"},
                 layout=f"id > {marker}")
    p = store.mlflow_run("analysis", {"group": "evil"}, check=False)
    assert not marker.exists()
    # a layout.json that is not an object is refused, named, before anything else reads it
    assert_refused(p, [f"run {rid}", "trajectory/layout.json"], store)


@pytest.mark.e2e
def test_a_recorded_probe_is_only_a_hint_in_the_report(store, tmp_path):
    marker = tmp_path / "PWNED"
    attack(
        store,
        tmp_path,
        group="evil",
        snaps=snapshots([0, 1, 2]),
        params={"probe": "os:system", "cmd": f"id > {marker}"},
        layout={"params": [], "cmd": f"id > {marker}"},
    )
    store.mlflow_run("analysis", {"group": "evil"})
    a = analysis_run(store, "evil")
    assert a.info.status == "FINISHED" and not marker.exists()
    assert "recorded with probe=os:system; pass -P probe=os:system to use it" in report_of(store, a, tmp_path)


PROBE_MODULE = '''
from pathlib import Path


def probe(layout, params):
    Path(params["marker"]).write_text(params.get("data_dir", ""))
    return None
'''


def test_a_probe_the_analyst_names_is_imported_and_called(env, tmp_path, monkeypatch):
    """The other side: what the analyst names (the Python API's ``probe=``) does run."""
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "analyst_probe.py").write_text(PROBE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    marker, data = tmp_path / "called", tmp_path / "data"
    data.mkdir()
    group = fresh("mine")
    attack(
        env,
        tmp_path,
        group=group,
        snaps=snapshots([0, 1, 2]),
        params={"probe": "os:system", "marker": str(marker), "data_dir": "/elsewhere"},
        layout={"params": []},
    )
    run_analysis(AnalysisOptions(group=group, probe="analyst_probe:probe", data_dir=str(data)))
    assert marker.read_text() == str(data)   # called, with the analyst's data_dir instead of the run's
    report = report_of(env, analysis_run(env, group), tmp_path)
    assert "probe 'analyst_probe:probe' failed: TypeError" in report and "recorded with" not in report


# -- 2. path traversal ------------------------------------------------------------------------------

def _outside(store, tmp: Path) -> tuple[Path, dict]:
    """A valid snapshot outside any run's artifacts, where a ``../`` entry leads from the cache."""
    secret = Path(store.env["WEIGHTSPACE_CACHE"]) / "secret.npy"
    secret.parent.mkdir(parents=True, exist_ok=True)
    np.save(secret, np.ones(40, np.float32))
    (secret.parent.parent / "secret.npy").write_bytes(secret.read_bytes())
    return secret, entry(secret, 3)


@pytest.mark.e2e
def test_an_absolute_manifest_entry_is_refused_with_the_run_and_the_entry(store, tmp_path):
    secret, info = _outside(store, tmp_path)
    rid = attack(store, tmp_path, group="evil", snaps=snapshots([0, 1, 2]),
                 edit=lambda m: (m["files"].update({str(secret): info}), m["epochs"].append(3)))
    p = store.mlflow_run("analysis", {"group": "evil"}, check=False)
    assert_refused(p, [f"run {rid}", repr(str(secret)), "epoch_NNNN.npy"], store)


@pytest.mark.parametrize("name", ["../../secret.npy", "ABS", "epoch_0003.npy/../../../secret.npy",
                                  "epoch_3.npy", "epoch_0003.npy.txt"])
def test_every_manifest_name_outside_the_writers_pattern_is_refused(env, tmp_path, name):
    secret, info = _outside(env, tmp_path)
    name = str(secret) if name == "ABS" else name
    rid = attack(env, tmp_path, group="evil", snaps=snapshots([0, 1, 2]),
                 edit=lambda m: (m["files"].update({name: info}), m["epochs"].append(3)))
    with pytest.raises(TrajectoryError) as e:
        trajectory(rid)
    assert f"run {rid}" in str(e.value) and repr(name) in str(e.value) and "\n" not in str(e.value)


def test_an_entry_must_be_the_writers_name_of_its_own_epoch(env, tmp_path):
    def swap(m):  # epoch_0002.npy's entry says it holds epoch 1
        m["files"]["epoch_0002.npy"]["epoch"] = 1
    rid = attack(env, tmp_path, group="evil", snaps=snapshots([0, 1, 2]), edit=swap)
    with pytest.raises(
        TrajectoryError, match=f"run {rid}: trajectory/manifest.json: entry 'epoch_0002.npy' says epoch 1"
    ):
        trajectory(rid)
    ok = attack(env, tmp_path, group="fine", snaps=snapshots([0, 1, 2]))
    assert list(trajectory(ok).epochs) == [0, 1, 2]


# -- 3. a manifest checked as a whole -----------------------------------------------------------------

@pytest.mark.e2e
def test_a_manifest_whose_files_drop_an_epoch_it_lists_is_refused(store, tmp_path):
    rid = attack(store, tmp_path, group="evil", snaps=snapshots([0, 1, 2, 3]),
                 edit=lambda m: m["files"].pop("epoch_0002.npy"))
    p = store.mlflow_run("analysis", {"group": "evil"}, check=False)
    assert_refused(p, [f"run {rid}", "trajectory/manifest.json", "epoch(s) 2 without a file"], store)


def _cnn_params(**kw) -> dict[str, str]:
    return {"experiment": "single", "dataset": "digits", "width": "0.125", "dropout": "0.5", "epochs": "4",
            "snapshot_every": "1", **kw}


@pytest.mark.parametrize(
    "kind, params, epochs, refused",
    [
        # a training run stores every snapshot_every-th epoch from its first, and the last
        ("training", _cnn_params(), [0, 1, 2, 3, 4], None),
        ("training", _cnn_params(), [0, 1, 3, 4], "lacks epoch(s) 2"),
        ("training", _cnn_params(), [0, 1, 2, 3], "lacks epoch(s) 4"),
        ("training", _cnn_params(snapshot_every="3"), [0, 3, 4], None),
        ("training", _cnn_params(snapshot_every="3"), [0, 4], "lacks epoch(s) 3"),
        ("training", _cnn_params(), [0, 1, 2, 3, 4, 5], "outside the run's epochs 0 to 4"),
        # a clone starts at its pretraining epoch
        ("training", _cnn_params(experiment="clone", pretrain_epochs="2"), [2, 3, 4], None),
        ("training", _cnn_params(experiment="clone", pretrain_epochs="2"), [3, 4], "lacks epoch(s) 2"),
        (
            "training",
            _cnn_params(experiment="clone", pretrain_epochs="2"),
            [0, 2, 3, 4],
            "outside the run's epochs 2",
        ),
        ("training", {"experiment": "single"}, [0, 1], "its params cannot say which snapshots"),
        # weightspace.record: epoch 0, multiples of snapshot_every that epoch_end saw, the last epoch
        ("recorded", {"snapshot_every": "2", "epochs": "5"}, [0, 2, 5], None),
        ("recorded", {"snapshot_every": "2", "epochs": "5"}, [0, 3], None),
        ("recorded", {"snapshot_every": "2", "epochs": "5"}, [0, 1, 2, 5], "neither multiples"),
        ("recorded", {"snapshot_every": "2", "epochs": "5"}, [0, 2, 6], "after the run's epochs=5"),
        ("recorded", {"snapshot_every": "2"}, [2, 4], "lacks epoch 0"),
    ],
)
def test_a_complete_manifest_must_agree_with_the_runs_params(env, tmp_path, kind, params, epochs, refused):
    experiment = params.get("experiment", "single") if kind == "training" else "recorded"
    rid = attack(env, tmp_path, group="g", snaps=snapshots(epochs), params=params, experiment=experiment)
    if refused is None:
        assert list(trajectory(rid).epochs) == epochs
        return
    with pytest.raises(TrajectoryError) as e:
        trajectory(rid)
    assert str(e.value).startswith(f"run {rid}:") and refused in str(e.value), str(e.value)


@pytest.mark.e2e
def test_malformed_manifest_json_names_the_run_and_the_file(store, tmp_path):
    rid = attack(store, tmp_path, group="evil", snaps=snapshots([0, 1]), raw_manifest=b'{"complete": tru')
    p = store.mlflow_run("analysis", {"group": "evil"}, check=False)
    assert_refused(p, [f"run {rid}: trajectory/manifest.json is not valid JSON"], store)
    assert "JSONDecodeError" not in p.stderr


@pytest.mark.parametrize(
    "manifest, refused",
    [
        (b'"a string"', "is not a weightspace manifest"),
        (b'{"complete": true, "files": {}, "epochs": []}', "is not a weightspace manifest"),
        (
            b'{"format": "weightspace-trajectory-1", "complete": true, "files": {}, "epochs": []}',
            "lists no snapshot",
        ),
        (b"[" * 100000, "is not valid JSON"),
    ],
)
def test_manifests_of_the_wrong_shape_are_refused_in_one_line(env, tmp_path, manifest, refused):
    rid = attack(env, tmp_path, group="evil", snaps=snapshots([0]), raw_manifest=manifest)
    with pytest.raises(TrajectoryError) as e:
        trajectory(rid)
    assert str(e.value).startswith(f"run {rid}: trajectory/manifest.json") and refused in str(e.value)


def test_a_seed_tag_that_is_not_an_integer_is_named(env, tmp_path):
    group = fresh("seeds")
    rid = attack(env, tmp_path, group=group, snaps=snapshots([0, 1]), tags={"weightspace.init_seed": "1; rm"})
    for read in (lambda: trajectory(rid), lambda: weightspace.find_siblings(group)):
        with pytest.raises(TrajectoryError, match=f"run {rid}: tag weightspace.init_seed is not an integer"):
            read()
    ok = attack(
        env, tmp_path, group=fresh("seeds"), snaps=snapshots([0, 1]), tags={"weightspace.init_seed": "7"}
    )
    assert trajectory(ok).init_seed == 7


# -- 4. paths from the store --------------------------------------------------------------------------

def test_which_data_dir_the_probes_read(tmp_path):
    here = str(tmp_path)
    assert probe_data("mnist", "/no/such/dir", "") == (
        None,
        "the run's data_dir '/no/such/dir' is not a directory "
        "here; pass -P data_dir=<the folder of the mnist IDX files>",
    )
    assert probe_data("mnist", here, "") == (here, f"mnist from {here} (the run's data_dir)")
    assert probe_data("mnist", "/no/such/dir", here) == (here, f"mnist from {here} (-P data_dir)")
    assert probe_data("fashion_mnist", here, "/mine") == ("/mine", "fashion_mnist from /mine (-P data_dir)")
    assert probe_data("mnist", "", "") == ("", "mnist (the copy shipped with weightspace)")
    assert probe_data("digits", "/no/such/dir", "") == ("", "digits (scikit-learn's copy)")


CHEAP = dict(probe_subset=20, interp_points=3, surface_grid=0, hessian_epochs="", spectrum_epochs="")


@pytest.mark.parametrize("run_dir, given, said", [
    ("/no/such/dir", "", "skipped: the run's data_dir '/no/such/dir' is not a directory here"),
    ("IDX", "", "mnist from IDX (the run's data_dir)"),
    ("/no/such/dir", "IDX", "mnist from IDX (-P data_dir)"),
])
def test_the_probes_read_a_runs_data_dir_only_when_it_is_here_and_say_what_they_read(env, tmp_path, run_dir,
                                                                                   given, said):
    idx = str(_write_idx_dir(tmp_path / "idx", n_train=30, n_test=10))
    run_dir, given, said = (s.replace("IDX", idx) for s in (run_dir, given, said))
    size = sum(p.numel() for p in build_model(0.125, 0.5, 0).parameters())
    group = fresh("cnn")
    attack(env, tmp_path, group=group, snaps=snapshots([0, 1, 2], size), experiment="single",
           params=_cnn_params(dataset="mnist", epochs="2", data_dir=run_dir))
    run_analysis(AnalysisOptions(group=group, data_dir=given, **CHEAP))
    a = analysis_run(env, group)
    assert a.info.status == "FINISHED" and said in report_of(env, a, tmp_path)


def test_an_analysis_data_dir_that_is_not_a_directory_is_refused(store, tmp_path):
    p = store.python("entrypoints.analysis", ["--group", "g", "--data_dir", str(tmp_path / "nope")])
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("weightspace: error:")]
    assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in p.stderr
    assert f"parameter 'data_dir': '{tmp_path / 'nope'}' is not a directory" in lines[0]


# -- 5. the smaller ones --------------------------------------------------------------------------------

@pytest.mark.e2e
def test_a_resume_that_succeeds_clears_the_error_and_keeps_it_in_the_history(store):
    store.mlflow_run("single", TINY)
    (run,) = store.runs()
    rid = run.info.run_id
    args = [f"--{k}={v}" for k, v in {**TINY, "lr": "0.1"}.items()]
    p = subprocess.run([sys.executable, "-m", "entrypoints.single", *args], cwd=REPO,
                       env={**store.env, "MLFLOW_RUN_ID": rid}, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "refusing to resume" in p.stderr
    refused = store.client().get_run(rid)
    assert refused.info.status == "FAILED" and "refusing to resume" in refused.data.tags["weightspace.error"]
    store.mlflow_run("single", TINY, run_id=rid)
    resumed = store.client().get_run(rid)
    assert resumed.info.status == "FINISHED" and "weightspace.error" not in resumed.data.tags
    assert resumed.data.tags["weightspace.error_history"] == refused.data.tags["weightspace.error"]


def test_recording_a_model_on_the_meta_device_fails_before_any_run_exists(env):
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    group, before = fresh("meta"), len(env.runs())
    with pytest.raises(ValueError, match=r"weightspace.record: .*0.weight.* meta device"):
        weightspace.record(model, group=group)
    assert len(env.runs()) == before
    model.to_empty(device="cpu")   # materialised: the same model records
    with weightspace.record(model, group=group, epochs=1) as rec:
        rec.epoch_end(1)
    assert [r.info.status for r in env.runs(f"tags.`weightspace.group` = '{group}'")] == ["FINISHED"]


@pytest.mark.parametrize("value, message", [
    ("99999999999999999999999", "is out of range (the largest allowed is 100000)"),
    ("1e30", "is out of range (the largest allowed is 100000)"),
    ("100001", "is out of range (the largest allowed is 100000)"),
    ("0", "expected an integer >= 1, got '0'"),
])
def test_an_integer_beyond_the_largest_allowed_is_named_out_of_range(value, message):
    with pytest.raises(ParamError) as e:
        build_config("single", {"snapshot_every": value})
    assert str(e.value).startswith("parameter 'snapshot_every': ") and message in str(e.value)
    assert build_config("single", {"snapshot_every": "100000"}).snapshot_every == 100000

