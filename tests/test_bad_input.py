"""Bad input, tried systematically (issue 5): every entry-point parameter with a wrong type,
out of range, empty and huge; unknown parameters; malformed data files; unknown run ids; an
unreachable tracking URI. Each must give one line naming what is wrong, a non-zero exit, and
the MLflow run (a real sqlite store) marked FAILED. Good values of every parameter must pass.

The entry points run in-process here (fast), exactly as ``mlflow run`` starts them: the module
``entrypoints.<name>`` run as ``__main__`` with its argv. tests/test_e2e.py covers the same path
through `mlflow run`.

The table below is written by hand, not derived from the validation code under test: a value
that the code wrongly accepts must fail here, not silently drop out of the table.
"""

from __future__ import annotations

import gzip
import re
import runpy
import signal
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import tomllib
from mlflow.tracking import MlflowClient

from conftest import REPO
from weightspace.tracking.store import init_store

UNREACHABLE = "http://127.0.0.1:9"
CALL_SECONDS = 60
HUGE = "x" * 5000
# What every call passes besides the parameter tried: the required parameters, and clone's
# pretrain_epochs (MLproject's default; `mlflow run` always passes every parameter).
BASE_ARGS = {"different_init": {"init_seed": "0"}, "same_init": {"shuffle_seed": "0"},
             "clone": {"shuffle_seed": "0", "pretrain_epochs": "10"}, "analysis": {"group": "g"}}
ENTRIES = ("single", "different_init", "same_init", "clone", "paper", "instability", "analysis", "tune")

# -- the table: parameter -> (bad values, good values), by hand ------------------------------------
# Every bad value must fail with one line naming the parameter (``parameter '<name>'``) and showing
# the value; every good value must get past validation. Parameters whose every string parses
# (data_dir, cache_dir, pretrain_run_id) are checked later against the disk or the store
# (test_missing_data_dir, test_unknown_run_ids) and only have good values here.
INT_JUNK = ["abc", "", "1.5", "1e400"]
FLOAT_JUNK = ["abc", "", "nan", "inf", "1e400"]
SEEDS = {
    "init_seed": (INT_JUNK + ["-1", "2147483648", "9" * 30], ["0", "2147483647"]),  # 0 .. 2**31-1
    # -1 (follow init_seed) is different_init's default: see its own row
    "shuffle_seed": (INT_JUNK + ["-2", "2147483648", "-99999999999"], ["0", "2147483647"]),
}
COMMON = {
    "dataset": (["cifar10", "", "mnist,digits", HUGE], ["mnist", "fashion_mnist", "digits"]),
    "data_dir": ([], [""]),
    "train_subset": (INT_JUNK + ["-1", "1000000001", "9" * 30], ["0", "1", "1000000000"]),  # 0 .. 10**9
    "batch_size": (INT_JUNK + ["0", "-1", "65537"], ["1", "64", "65536"]),  # 1 .. 65536
    "lr": (FLOAT_JUNK + ["0", "-0.1", "10.5", "-1e30"], ["1e-6", "0.01", "10"]),  # (0, 10]
    "momentum": (FLOAT_JUNK + ["-0.1", "1", "1.5"], ["0", "0.9", "0.999"]),  # [0, 1)
    "weight_decay": (FLOAT_JUNK + ["-1e-5", "1", "2"], ["0", "1e-5", "0.5"]),  # [0, 1)
    "dropout": (FLOAT_JUNK + ["-0.1", "1", "1.0"], ["0", "0.5", "0.99"]),  # [0, 1)
    "width": (FLOAT_JUNK + ["0", "-1", "16.5"], ["0.125", "1", "16"]),  # (0, 16]
    "precision": (["fp16", "FP32", "", HUGE], ["fp32", "bf16"]),
    "device": (["gpu", "cuda:", "cuda:x", "", HUGE], ["auto", "cpu"]),
}
EPOCHS = (INT_JUNK + ["0", "-1", "100001", "9" * 30], ["1", "100000"])  # 1 .. 100000
SNAPSHOT_EVERY = (INT_JUNK + ["0", "-1", "100001"], ["1", "7", "100000"])  # 1 .. 100000
CHECKPOINT_EVERY = (INT_JUNK + ["-1", "100001"], ["0", "1", "5", "100000"])  # 0 (auto) .. 100000
PREDICTIONS_SUBSET = (INT_JUNK + ["-1", "1000001"], ["0", "1", "1000000"])  # 0 (none) .. 10**6
STEP_CAPTURE = (INT_JUNK + ["2", "-1", "on"], ["0", "1"])  # 1 is refused at training time off CUDA
# empty (do not register) or a model name of up to 100 of [A-Za-z0-9_.-]
REGISTER_MODEL = (["has space", "a/b", "x" * 101], ["", "my_model-1.0"])
TRAIN = {**SEEDS, "epochs": EPOCHS, "snapshot_every": SNAPSHOT_EVERY, "checkpoint_every": CHECKPOINT_EVERY,
         "predictions_subset": PREDICTIONS_SUBSET, "step_capture": STEP_CAPTURE,
         "register_model": REGISTER_MODEL, **COMMON}
# Clones (and the paper's clone family) pretrain for pretrain_epochs (default 10) of the epochs
# (default 200), counted from the start: 1 <= pretrain_epochs < epochs.
PRETRAIN_EPOCHS = (INT_JUNK + ["0", "-1", "200", "100001"], ["1", "199"])
CLONE_EPOCHS = (INT_JUNK + ["0", "-1", "100001"], ["11", "100000"])
TABLE: dict[str, dict[str, tuple[list[str], list[str]]]] = {
    "single": TRAIN,
    "different_init": {**TRAIN, "shuffle_seed": (SEEDS["shuffle_seed"][0], ["-1", "0", "2147483647"])},
    "same_init": TRAIN,
    "clone": {
        **TRAIN,
        "epochs": CLONE_EPOCHS,
        "pretrain_epochs": PRETRAIN_EPOCHS,
        "pretrain_run_id": ([], [""]),
    },
    "paper": {
        "replicas": (INT_JUNK + ["0", "-1", "101"], ["1", "5", "100"]),  # 1 .. 100
        "epochs": CLONE_EPOCHS,
        "snapshot_every": SNAPSHOT_EVERY,
        "checkpoint_every": CHECKPOINT_EVERY,
        "predictions_subset": PREDICTIONS_SUBSET,
        "step_capture": STEP_CAPTURE,
        "register_model": REGISTER_MODEL,
        "single_snapshot_every": (INT_JUNK + ["0", "-1"], ["1", "5"]),
        # the different-init family uses init_seed .. init_seed + replicas - 1
        "init_seed": (SEEDS["init_seed"][0], ["0", "12345"]),
        "pretrain_epochs": PRETRAIN_EPOCHS,
        "siblings": (["parallel", "SEQUENTIAL", "", HUGE], ["sequential", "batched", "processes"]),
        # CPUS >= 1 and a GPU fraction in (0, 1]
        "ray_resources": (["abc", "", "0", "-1", "1:0", "1:1.5", "1:x", "1.5", HUGE],
                          ["1", "1:0.25", "16:1"]),
        "analysis": (INT_JUNK + ["2", "-1", "yes"], ["0", "1"]),
        **COMMON,
    },
    "instability": {
        # spawn epochs below epochs (default 200)
        "spawn_epochs": (["abc", "", "0,,1", "-1", "1.5", "0;1", "200", "0,5,250"],
                         ["0", "0,1,2,5,10,20", "199"]),
        "clones_per_spawn": (INT_JUNK + ["1", "0", "101"], ["2", "100"]),  # 2 .. 100
        "epochs": (CLONE_EPOCHS[0], ["21", "100000"]),  # above the default spawn epochs
        "snapshot_every": SNAPSHOT_EVERY,
        "checkpoint_every": CHECKPOINT_EVERY,
        "predictions_subset": PREDICTIONS_SUBSET,
        "step_capture": STEP_CAPTURE,
        "register_model": REGISTER_MODEL,
        "init_seed": SEEDS["init_seed"],
        **COMMON,
    },
    "analysis": {
        "cache_dir": ([], [""]),
        "probes": (INT_JUNK + ["2", "-1"], ["0", "1"]),
        # dotted names only: never a path, a command or a bare module
        "probe": (
            ["nocolon", "os:system; id", "/tmp/p.py:f", "a b:c", "x:", HUGE],
            ["", "examples.record_resnet:probe"],
        ),
        "data_dir": (["/no/such/weightspace/dir"], ["", "."]),
        "interp_points": (
            INT_JUNK + ["1", "2", "-2", "1001"],
            ["0", "-1", "3", "25", "1000"],
        ),  # 0, -1 or 3 .. 1000
        "probe_subset": (INT_JUNK + ["-2", "10000001"], ["-1", "0", "500", "10000000"]),  # -1, 0 .. 10**7
        "hessian_epochs": (["a,b", "0,,10", "-1", "0;10", "1.5"], ["", "0", "0,10,50,100,200"]),
        "hessian_iters": (INT_JUNK + ["0", "1001"], ["1", "20", "1000"]),  # 1 .. 1000
        "hessian_runs": (INT_JUNK + ["-1", "1001"], ["0", "1", "1000"]),  # 0 .. 1000
        "spectrum_epochs": (["a,b", "0,,10", "-1", "Auto", "auto,10", "1.5"], ["", "auto", "0", "0,10,50"]),
        "surface_grid": (INT_JUNK + ["1", "2", "-2", "202"], ["-1", "0", "3", "201"]),  # -1, 0, 3 .. 201
        "device": (["gpu", "cuda:", "cuda:x", "", HUGE], ["auto", "cpu"]),
    },
    "tune": {
        "n_trials": (INT_JUNK + ["0", "-1", "10001"], ["1", "10000"]),  # 1 .. 10000
        "objective": (["accuracy", "EPOCHS_TO_LOSS", "", HUGE], ["epochs_to_loss", "test_loss"]),
        "target_loss": (FLOAT_JUNK + ["0", "-1", "100"], ["1e-3", "99.9"]),  # (0, 100)
        "epochs": EPOCHS,
        "storage": (
            ["optuna.db", "/tmp/optuna.db", "://x"],
            ["", "sqlite:///optuna.db", "postgresql://host/db"],
        ),
        "study_name": (["has space", "a/b", "x" * 101], ["", "my_study-1.0"]),  # up to 100 of [A-Za-z0-9_.-]
        "sampler_seed": (INT_JUNK + ["-1", "2147483648"], ["0", "2147483647"]),  # 0 .. 2**31-1
        **{k: COMMON[k] for k in ("dataset", "data_dir", "train_subset", "width", "precision", "device")},
        **SEEDS,
    },
}


def _id(v: str) -> str:
    return repr(v if len(v) <= 12 else v[:9] + f"..{len(v)}")


def bad_cases():
    for entry, params in TABLE.items():
        for name, (bad, _) in params.items():
            for v in bad:
                yield pytest.param(entry, name, v, id=f"{entry}-{name}-{_id(v)}")


def good_cases():
    for entry, params in TABLE.items():
        for name, (_, good) in params.items():
            for v in good:
                yield pytest.param(entry, name, v, id=f"{entry}-{name}-{_id(v)}")


def argv_for(entry: str, name: str, value: str) -> list[str]:
    argv = [f"--{k}={v}" for k, v in BASE_ARGS.get(entry, {}).items() if k != name]
    return argv + [f"--{name}={value}"]


def shows(line: str, value: str) -> bool:
    """The error line shows the offending value (quoted, and cut short when long)."""
    if value == "":
        return "''" in line or '""' in line
    return value[:30] in line


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


class RanTooLong(BaseException):
    """Raised by the alarm: the entry point got past validation and went on working (training)."""


def _alarm(signum, frame):
    raise RanTooLong(f"the entry point still ran after {CALL_SECONDS} s: a bad value was accepted and it "
                     "went on to train")


def call(entry: str, argv: list[str], capsys) -> tuple[int, str]:
    """Run ``python -m entrypoints.<entry> <argv>`` in this process; (exit code, stderr).

    Every call here should end within milliseconds; an alarm stops one that wrongly goes on to
    train (a BaseException, so the entry point's own error handling does not swallow it).
    """
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CALL_SECONDS)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.syspath_prepend(str(REPO))
            mp.setattr(sys, "argv", [str(REPO / "entrypoints" / f"{entry}.py"), *argv])
            with pytest.raises(SystemExit) as e:
                runpy.run_module(f"entrypoints.{entry}", run_name="__main__")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    err = capsys.readouterr().err
    return e.value.code, err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("weightspace: error:")]


def assert_one_line_failure(code, err, needle, client=None, run_id=None):
    assert code != 0
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert needle in lines[0], (needle, lines[0])
    assert len(lines[0]) < 600 and "Traceback" not in err
    if client is not None:
        run = client.get_run(run_id)
        assert run.info.status == "FAILED"
        assert needle in run.data.tags["weightspace.error"]
    return lines[0]


def test_table_covers_every_mlproject_parameter():
    """The table names exactly the parameters MLproject declares for each entry point
    (analysis: less its three run selectors, checked against the store)."""
    import yaml

    eps = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]
    assert set(eps) == set(ENTRIES)
    for entry in ENTRIES:
        declared = set(eps[entry]["parameters"]) - (
            {"group", "run_ids", "parent_run_id"} if entry == "analysis" else set()
        )
        assert set(TABLE[entry]) == declared, (entry, set(TABLE[entry]) ^ declared)


@pytest.mark.parametrize("entry, name, value", list(bad_cases()))
def test_every_parameter_rejects_bad_values(run_env, capsys, entry, name, value):
    client, run_id = run_env
    code, err = call(entry, argv_for(entry, name, value), capsys)
    assert code == 2, err
    line = assert_one_line_failure(code, err, f"parameter '{name}'", client, run_id)
    assert shows(line, value), (value[:40], line)


@pytest.mark.parametrize("entry, name, value", list(good_cases()))
def test_every_parameter_accepts_good_values(monkeypatch, capsys, entry, name, value):
    """Validation passes, so the entry point goes on to the tracking store: here unreachable."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", UNREACHABLE)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    code, err = call(entry, argv_for(entry, name, value), capsys)
    line = assert_one_line_failure(code, err, f"tracking URI {UNREACHABLE} is unreachable")
    assert "parameter" not in line, line
    assert code == 1


@pytest.mark.parametrize("entry", ENTRIES)
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
    code, err = call(
        "clone",
        [
            "--shuffle_seed=1",
            "--pretrain_run_id=ffffffffffffffffffffffffffffffff",
            "--dataset=digits",
            "--width=0.125",
            "--epochs=3",
            "--pretrain_epochs=1",
        ],
        capsys,
    )
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
    bad = [
        (r"\bimport (cPickle|pickle|dill|cloudpickle|joblib)\b", "pickle module"),
        (r"allow_pickle\s*=\s*True", "allow_pickle=True"),
        (r"torch\.load\((?![^)]*weights_only\s*=\s*True)", "torch.load without weights_only=True"),
        (r"mlflow\.(pytorch|sklearn)\.(load_model|log_model|save_model)", "pickled MLflow model flavour"),
        # a pyfunc model is saved from code (python_model=<path of a .py file>), never as a pickled object
        (
            r"mlflow\.pyfunc\.(log_model|save_model)\((?![\s\S]{0,200}?python_model\s*=\s*str\()",
            "pickled pyfunc model",
        ),
        (r"pd\.read_pickle|np\.load\((?![^)]*allow_pickle\s*=\s*False)(?![^)]*mmap_mode)", "unsafe load"),
    ]
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
