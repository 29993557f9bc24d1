"""The parameter declarations: parsing on both sides of every bound, required and unknown
parameters, and MLproject / docs/parameters.md generated from the declarations (checked with MLflow's
own MLproject loader)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.projects import _project_spec

from weightspace import params as P
from weightspace.config import MAX_EPOCHS, TRAINING_ENTRIES, TrainConfig
from weightspace.params import REQUIRED, Decl, ParamError, int_range
from weightspace.workflows.analysis_runs import ANALYSIS
from weightspace.workflows.paper_suite import PAPER
from weightspace.workflows.tuning import TUNE

ENTRIES = {**TRAINING_ENTRIES, "paper": PAPER, "analysis": ANALYSIS, "tune": TUNE}
SINGLE, SAME_INIT, CLONE = (TRAINING_ENTRIES[n] for n in ("single", "same_init", "clone"))

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("decl, good, bad", [
    (int_range(1, 100, "h"), ["1", "100", "+7", "1e2", " 50 "], ["0", "101", "1.5", "", "x", "1e400", "nan"]),
    (Decl(float, "a float > 0 and <= 10", "h", lambda v: 0 < v <= 10), ["10", "1e-9", "5e-2", "0.3"],
     ["0", "-1", "10.000001", "nan", "inf", "", "abc"]),
    (Decl(str, "one of a, b", "h", lambda v: v in ("a", "b")), ["a", " b "], ["c", "", "A"]),
])
def test_decl_accepts_and_refuses_both_sides_of_its_bounds(decl, good, bad):
    for g in good:
        decl.parse("p", g)
    for b in bad:
        with pytest.raises(ParamError) as e:
            decl.parse("p", b)
        msg = str(e.value)   # above the largest allowed: "'101' is out of range (...); expected ..."
        assert msg.startswith("parameter 'p': ") and "expected " in msg and "\n" not in msg


def test_int_values_written_as_floats_parse_exactly():
    d = int_range(0, 10**6, "h")
    assert d.parse("p", "1e3") == 1000 and isinstance(d.parse("p", "1e3"), int)
    assert d.parse("p", "7") == 7


def test_parse_fills_defaults_and_requires_what_has_none():
    got = P.parse_values(SAME_INIT, {"shuffle_seed": "3", "lr": "0.05"})
    assert (got["shuffle_seed"], got["lr"], got["init_seed"], got["snapshot_every"], got["epochs"]) \
        == (3, 0.05, 0, 10, 200)
    assert list(got) == list(SAME_INIT.order)
    with pytest.raises(ParamError, match=r"^parameter 'shuffle_seed': required by entry point same_init"):
        P.parse_values(SAME_INIT, {"lr": "0.05"})
    with pytest.raises(ParamError, match=r"^unknown parameter 'learning_rate' for entry point single; "
                                         r"allowed: init_seed"):
        P.parse_values(SINGLE, {"learning_rate": "0.1"})


def test_parse_argv_takes_both_spellings_and_names_mistakes():
    assert P.parse_argv(["--lr", "0.1", "--epochs=3"], SINGLE) == {"lr": "0.1", "epochs": "3"}
    with pytest.raises(ParamError, match="parameter 'lr': missing value"):
        P.parse_argv(["--lr"], SINGLE)
    with pytest.raises(ParamError, match="unexpected argument 'lr'"):
        P.parse_argv(["lr", "0.1"], SINGLE)
    with pytest.raises(ParamError, match="unknown parameter 'replicas' for entry point single"):
        P.parse_argv(["--replicas", "2"], SINGLE)


def test_typed_values_are_checked_not_reparsed():
    d = int_range(0, 10, "h")
    assert d.parse("p", 7) == 7
    with pytest.raises(ParamError, match=r"^parameter 'p': '11' is out of range"):
        d.parse("p", 11)
    lr = Decl(float, "a float > 0", "h", lambda v: v > 0)
    assert lr.parse("lr", 1) == 1.0 and isinstance(lr.parse("lr", 1), float)
    with pytest.raises(ParamError, match=r"^parameter 'lr': expected a float > 0, got 'nan'"):
        lr.parse("lr", float("nan"))


def test_each_entry_point_differs_only_by_its_table():
    defaults = {n: {k: d for k, (_, d) in e.params().items()} for n, e in ENTRIES.items()}
    assert [defaults[n]["snapshot_every"] for n in TRAINING_ENTRIES] == [1, 10, 10, 10]
    assert defaults["different_init"]["shuffle_seed"] == -1
    assert defaults["different_init"]["init_seed"] is REQUIRED
    assert (defaults["tune"]["epochs"], defaults["paper"]["pretrain_epochs"]) == (30, 10)
    # one declaration, with one default, behind every entry point's epochs
    decls = {id(e.params()["epochs"][0]) for n, e in ENTRIES.items() if n != "analysis"}
    assert len(decls) == 1
    assert TrainConfig.__dataclass_fields__["epochs"].default == 200
    assert SINGLE.params()["epochs"][0].allowed == f"an integer from 1 to {MAX_EPOCHS}"


def test_each_parameter_is_declared_once():
    """A parameter's declaration (``name: type = DECL(default)``) appears in one place in the package."""
    text = "\n".join(p.read_text() for root in (REPO / "src" / "weightspace", REPO / "analysis")
                     for p in root.rglob("*.py"))
    for name in {n for e in ENTRIES.values() for n in e.order}:
        hits = [
            line
            for line in text.splitlines()
            if re.match(rf"\s*{name}: \w+ = (Decl|int_range|one_of|[A-Z_]+)\(", line)
        ]
        assert len(hits) == 1, (name, hits)


@pytest.mark.parametrize("name", list(ENTRIES))
def test_every_parameter_has_help_and_its_default_is_allowed(name):
    for pname, (d, default) in ENTRIES[name].params().items():
        assert d.help and d.allowed, pname
        if default is not REQUIRED:
            assert d.parse(pname, P.fmt(default)) == default, pname


@pytest.mark.parametrize("name", list(ENTRIES))
def test_mlproject_as_mlflow_reads_it_matches_the_declarations(name):
    """MLflow's own loader: same parameters in the same order, same types, same defaults, same command."""
    ep = _project_spec.load_project(str(REPO)).get_entry_point(name)
    params = ENTRIES[name].params()
    assert list(ep.parameters) == list(params)
    for pname, (d, default) in params.items():
        p = ep.parameters[pname]
        assert p.type == P.MLPROJECT_TYPES[d.kind], pname
        if default is REQUIRED:
            assert p.default is None, pname
        else:
            assert d.parse(pname, str(p.default)) == default, pname
    assert ep.command.startswith(f"python -m entrypoints.{name} ")
    assert all(f"--{n} {{{n}}}" in ep.command for n in params)


def test_mlproject_and_parameter_tables_are_what_the_generator_writes():
    res = subprocess.run([sys.executable, "scripts/gen_mlproject.py", "--check"], cwd=REPO,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_as_strings_round_trips_through_parse():
    clone = {"shuffle_seed": "2", "weight_decay": "3e-4", "data_dir": "/x y"}
    for entry, given in [(SINGLE, {}), (CLONE, clone)]:
        values = P.parse_values(entry, given)
        assert P.parse_values(entry, P.as_strings(values)) == values


def test_the_command_line_prints_its_usage_on_no_command():
    res = subprocess.run([sys.executable, "-m", "weightspace"], capture_output=True, text=True, cwd="/")
    assert res.returncode == 2 and "run ENTRY" in res.stderr and "flags TUNE_RUN_ID" in res.stderr


@pytest.mark.parametrize(("error", "want"), [
    (ValueError("bad value\nsecond line"), "ValueError: bad value"),
    (RuntimeError(""), "RuntimeError: RuntimeError"),
    (KeyError("k"), "KeyError: 'k'"),
    (KeyboardInterrupt(), "interrupted"),
])
def test_one_line_names_foreign_errors_by_class_and_keeps_the_first_line(error, want):
    from weightspace.params import ParamError, one_line

    assert one_line(error) == want
    assert one_line(ParamError("parameter 'lr': must be > 0\nmore")) == "parameter 'lr': must be > 0"
    assert one_line(TimeoutError("no answer in 30 s")) == "no answer in 30 s"


def test_relative_sqlite_uris_are_told_apart_from_absolute_ones():
    from pathlib import Path

    from weightspace.workflows.entry_run import _relative_sqlite

    assert _relative_sqlite("sqlite:///mlflow.db") == Path("mlflow.db")
    assert _relative_sqlite("sqlite:///runs/m.db?timeout=5") == Path("runs/m.db")
    assert _relative_sqlite("sqlite:////tmp/mlflow.db") is None
    assert _relative_sqlite("http://127.0.0.1:5005") is None and _relative_sqlite("postgresql://h/db") is None
