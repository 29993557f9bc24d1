"""Bad input, tried systematically (issue 5): every entry-point parameter with a wrong type,
out of range, empty and huge; unknown parameters; malformed data files; unknown run ids; an
unreachable tracking URI. Each must give one line naming what is wrong, a non-zero exit, and
the MLflow run (a real sqlite store) marked FAILED.

The entry points run in-process here (fast); tests/test_e2e.py covers the same path through
`mlflow run`.
"""

from __future__ import annotations

import gzip
import re
from importlib.metadata import version
from pathlib import Path

import pytest
import tomllib
from mlflow.tracking import MlflowClient

from conftest import REPO
from weightspace import cli
from weightspace.experiments import analyse as analysis_run, paper, tune
from weightspace.config import SPECS, parse_value
from weightspace.tracking.store import init_store

TRAIN_REQUIRED = {"different_init": {"init_seed": "0"}, "same_init": {"shuffle_seed": "0"},
                  "clone": {"shuffle_seed": "0"}}
ENTRY = {
    "single": lambda argv: cli.train_entry("single", argv),
    "different_init": lambda argv: cli.train_entry("different_init", argv),
    "same_init": lambda argv: cli.train_entry("same_init", argv),
    "clone": lambda argv: cli.train_entry("clone", argv),
    "paper": paper.paper_entry,
    "analysis": analysis_run.analysis_entry,
    "tune": tune.tune_entry,
}


def _params(entry: str) -> dict:
    """name -> Spec of every parameter the entry point validates."""
    if entry in cli.TRAIN_PARAMS:
        return {k: SPECS[k] for k in cli.TRAIN_PARAMS[entry] + cli.COMMON}
    if entry == "paper":
        return {**{k: SPECS[k] for k in paper.TRAIN_KEYS + cli.COMMON}, **paper.PAPER_SPECS}
    if entry == "analysis":
        return dict(analysis_run.OPTION_SPECS)
    return {**{k: SPECS[k] for k in tune.FIXED if k in SPECS}, **tune.TUNE_SPECS}


def _rejected(name, spec, value) -> bool:
    try:
        parse_value(name, value, spec)
    except ValueError:
        return True
    return False


def cases():
    for entry in ENTRY:
        for name, spec in _params(entry).items():
            if spec.kind is int:
                values = ["abc", "", "1.5", "9" * 30, "-99999999999"]
            elif spec.kind is float:
                values = ["abc", "", "nan", "1e400", "-1e30"]
            else:
                values = ["definitely-not-allowed", "x" * 5000]
            for v in values:
                if _rejected(name, spec, v):  # values a parameter legitimately accepts are not bad input
                    yield pytest.param(entry, name, v, id=f"{entry}-{name}-{v[:12]}")


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory):
    """One real sqlite store for the module (creating a schema costs about a second)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('bad-input') / 'mlflow.db'}"
    init_store(uri)
    return uri


@pytest.fixture
def run_env(store_uri, tmp_path, monkeypatch):
    """A fresh run, as `mlflow run` would have created it, named by MLFLOW_RUN_ID."""
    uri = store_uri
    client = MlflowClient(uri)
    run_id = client.create_run("0").info.run_id
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    monkeypatch.setenv("WEIGHTSPACE_CACHE", str(tmp_path / "cache"))
    return client, run_id


def call(entry: str, argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        ENTRY[entry](argv)
    err = capsys.readouterr().err
    return e.value.code, err


def assert_one_line_failure(code, err, needle, client=None, run_id=None):
    assert code != 0
    lines = [line for line in err.splitlines() if line.startswith("weightspace: error:")]
    assert len(lines) == 1, err
    assert needle in lines[0], (needle, lines[0])
    assert len(lines[0]) < 600 and "Traceback" not in err
    if client is not None:
        run = client.get_run(run_id)
        assert run.info.status == "FAILED"
        assert needle in run.data.tags["weightspace.error"]


@pytest.mark.parametrize("entry, name, value", list(cases()))
def test_every_parameter_rejects_bad_values(run_env, capsys, entry, name, value):
    client, run_id = run_env
    argv = [f"--{k}={v}" for k, v in TRAIN_REQUIRED.get(entry, {}).items() if k != name]
    if entry == "analysis" and name not in ("group",):
        argv.append("--group=g")
    argv.append(f"--{name}={value}")
    code, err = call(entry, argv, capsys)
    assert code == 2
    assert_one_line_failure(code, err, f"parameter '{name}'", client, run_id)


@pytest.mark.parametrize("entry", list(ENTRY))
def test_unknown_parameter(run_env, capsys, entry):
    client, run_id = run_env
    code, err = call(entry, ["--learning_rate=0.1"], capsys)
    assert_one_line_failure(code, err, "unknown parameter 'learning_rate'", client, run_id)


def _idx(tmp: Path, broken: str | None) -> Path:
    import numpy as np

    d = tmp / "idx"
    d.mkdir()
    for split, n in (("train", 30), ("t10k", 10)):
        for kind, shape, magic in (("images-idx3", (n, 28, 28), 0x0803), ("labels-idx1", (n,), 0x0801)):
            name = f"{split}-{kind}-ubyte"
            blob = magic.to_bytes(4, "big") + b"".join(s.to_bytes(4, "big") for s in shape)
            blob += np.zeros(shape, np.uint8).tobytes()
            if name == broken:
                blob = blob[:-7]
            (d / (name + ".gz")).write_bytes(gzip.compress(blob))
    return d


def test_malformed_and_missing_data_files(run_env, capsys, tmp_path):
    client, run_id = run_env
    d = _idx(tmp_path, "t10k-images-idx3-ubyte")
    code, err = call("single", ["--dataset=mnist", f"--data_dir={d}", "--epochs=1", "--width=0.125"], capsys)
    assert code == 2
    assert_one_line_failure(code, err, "t10k-images-idx3-ubyte", client, run_id)
    assert str(d) in err


def test_missing_data_dir(run_env, capsys, tmp_path):
    client, run_id = run_env
    code, err = call("same_init", ["--shuffle_seed=1", f"--data_dir={tmp_path}/nope", "--epochs=1"], capsys)
    assert_one_line_failure(code, err, "not a directory", client, run_id)


def test_unknown_run_ids(run_env, capsys, monkeypatch):
    client, run_id = run_env
    code, err = call("clone", ["--shuffle_seed=1", "--pretrain_run_id=ffffffffffffffffffffffffffffffff",
                               "--dataset=digits", "--width=0.125", "--epochs=3", "--pretrain_epochs=1"], capsys)
    assert_one_line_failure(code, err, "parameter 'pretrain_run_id'", client, run_id)
    # a pretrain_run_id that exists but is not a pretraining run
    other = client.create_run("0", tags={"weightspace.experiment": "same_init"}).info.run_id
    client.set_terminated(other, "FINISHED")
    run2 = client.create_run("0").info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", run2)
    code, err = call("clone", ["--shuffle_seed=1", f"--pretrain_run_id={other}", "--dataset=digits",
                               "--width=0.125", "--epochs=3", "--pretrain_epochs=1"], capsys)
    assert_one_line_failure(code, err, "is not a pretraining run", client, run2)
    # a run id in MLFLOW_RUN_ID that the store does not know
    monkeypatch.setenv("MLFLOW_RUN_ID", "0" * 32)
    code, err = call("single", ["--dataset=digits", "--epochs=1"], capsys)
    assert code != 0 and err.count("weightspace: error:") == 1 and "0" * 32 in err


def test_unreachable_tracking_uri(monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    code, err = call("single", ["--dataset=digits", "--epochs=1"], capsys)
    assert_one_line_failure(code, err, "tracking URI http://127.0.0.1:9 is unreachable")


def test_nothing_is_ever_unpickled():
    """No code path can unpickle an artifact: no pickle/joblib/cloudpickle loads, numpy loads
    refuse pickles, torch.load only with weights_only=True, no mlflow.pytorch models."""
    bad = [(r"\bimport (cPickle|pickle|dill|cloudpickle|joblib)\b", "pickle module"),
           (r"allow_pickle\s*=\s*True", "allow_pickle=True"),
           (r"torch\.load\((?![^)]*weights_only\s*=\s*True)", "torch.load without weights_only=True"),
           (r"mlflow\.(pytorch|sklearn|pyfunc)\.(load_model|log_model)", "pickled MLflow model flavour"),
           (r"pd\.read_pickle|np\.load\((?![^)]*allow_pickle\s*=\s*False)(?![^)]*mmap_mode)", "unsafe load")]
    offenders = []
    for root in ("src", "analysis", "entrypoints", "benchmarks"):
        for f in (REPO / root).rglob("*.py"):
            text = f.read_text()
            for pat, what in bad:
                for m in re.finditer(pat, text):
                    line = text[:m.start()].count("\n") + 1
                    offenders.append(f"{f.relative_to(REPO)}:{line}: {what}")
    assert not offenders, offenders


def test_mlflow_floor():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    [spec] = [d for d in deps if d.startswith("mlflow")]
    floor = re.search(r">=\s*([\d.]+)", spec).group(1)
    as_tuple = lambda v: tuple(int(x) for x in re.findall(r"\d+", v)[:3])  # noqa: E731
    assert as_tuple(floor) >= (3, 16, 1)
    assert as_tuple(version("mlflow")) >= (3, 16, 1)
    conda = (REPO / "conda.yaml").read_text()
    assert "mlflow>=3.16.1" in conda
