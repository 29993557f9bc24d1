"""The parameter declarations: parsing on both sides of every bound, required and unknown
parameters, and MLproject / docs/parameters.md generated from the declarations (checked with MLflow's
own MLproject loader)."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.projects import _project_spec

from weightspace import params as P
from weightspace.config import MAX_EPOCHS
from weightspace.experiments import ENTRY_POINTS, entry_point
from weightspace.experiments.training import Clone, DifferentInit, SameInit, Single
from weightspace.params import Decl, ParamError, int_range

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
    got = P.parse(SameInit, {"shuffle_seed": "3", "lr": "0.05"}, "same_init")
    assert (got.shuffle_seed, got.lr, got.init_seed, got.snapshot_every, got.epochs) == (3, 0.05, 0, 10, 200)
    with pytest.raises(ParamError, match=r"^parameter 'shuffle_seed': required by entry point same_init"):
        P.parse(SameInit, {"lr": "0.05"}, "same_init")
    with pytest.raises(ParamError, match=r"^unknown parameter 'learning_rate' for entry point single; allowed: init_seed"):
        P.parse(Single, {"learning_rate": "0.1"}, "single")


def test_parse_argv_takes_both_spellings_and_names_mistakes():
    assert P.parse_argv(["--lr", "0.1", "--epochs=3"], Single, "single") == {"lr": "0.1", "epochs": "3"}
    with pytest.raises(ParamError, match="parameter 'lr': missing value"):
        P.parse_argv(["--lr"], Single, "single")
    with pytest.raises(ParamError, match="unexpected argument 'lr'"):
        P.parse_argv(["lr", "0.1"], Single, "single")
    with pytest.raises(ParamError, match="unknown parameter 'replicas' for entry point single"):
        P.parse_argv(["--replicas", "2"], Single, "single")


def test_each_entry_point_declares_its_own_defaults_of_shared_parameters():
    assert [c.__dataclass_fields__["snapshot_every"].default for c in (Single, DifferentInit, SameInit, Clone)] \
        == [1, 10, 10, 10]
    assert DifferentInit.__dataclass_fields__["shuffle_seed"].default == -1
    assert P.required(DifferentInit.__dataclass_fields__["init_seed"])
    # one declaration: the same Decl object behind every entry point's epochs
    decls = {id(P.decl_of(entry_point(n).params.__dataclass_fields__["epochs"])) for n in ("single", "clone", "paper")}
    assert len(decls) == 1
    assert P.decl_of(Single.__dataclass_fields__["epochs"]).allowed == f"an integer from 1 to {MAX_EPOCHS}"


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
def test_every_parameter_has_help_and_its_default_is_allowed(name):
    cls = entry_point(name).params
    for f in P.declared(cls):
        d = P.decl_of(f)
        assert d.help and d.allowed, f.name
        if not P.required(f):
            assert d.parse(f.name, P.fmt(f.default)) == f.default, f.name


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
def test_mlproject_as_mlflow_reads_it_matches_the_declarations(name):
    """MLflow's own loader: same parameters in the same order, same types, same defaults, same command."""
    ep = _project_spec.load_project(str(REPO)).get_entry_point(name)
    fs = P.declared(entry_point(name).params)
    assert list(ep.parameters) == [f.name for f in fs]
    for f in fs:
        p, d = ep.parameters[f.name], P.decl_of(f)
        assert p.type == P.MLPROJECT_TYPES[d.kind], f.name
        if P.required(f):
            assert p.default is None, f.name
        else:
            assert d.parse(f.name, str(p.default)) == f.default, f.name
    assert ep.command.startswith(f"python -m entrypoints.{name} ")
    assert all(f"--{f.name} {{{f.name}}}" in ep.command for f in fs)


def test_mlproject_and_parameter_tables_are_what_the_generator_writes():
    res = subprocess.run([sys.executable, "scripts/gen_mlproject.py", "--check"], cwd=REPO,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_as_strings_round_trips_through_parse():
    for cls, given in [(Single, {}), (Clone, {"shuffle_seed": "2", "weight_decay": "3e-4", "data_dir": "/x y"})]:
        inst = P.parse(cls, given, "e")
        assert P.parse(cls, P.as_strings(inst), "e") == inst
        assert dataclasses.is_dataclass(inst) and inst.__dataclass_params__.frozen


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

    from weightspace.cli import _relative_sqlite

    assert _relative_sqlite("sqlite:///mlflow.db") == Path("mlflow.db")
    assert _relative_sqlite("sqlite:///runs/m.db?timeout=5") == Path("runs/m.db")
    assert _relative_sqlite("sqlite:////tmp/mlflow.db") is None
    assert _relative_sqlite("http://127.0.0.1:5005") is None and _relative_sqlite("postgresql://h/db") is None
