from pathlib import Path

import pytest

from weightspace.config import (
    ParamError,
    TrainConfig,
    build_config,
    config_from_params,
    pretrain_config,
    unquote_param,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "name, value, allowed",
    [
        ("epochs", "abc", "integer"),
        ("epochs", "0", "integer from 1"),
        ("epochs", "2.5", "integer"),
        ("epochs", "", "integer"),
        ("epochs", "10000000000", "integer from 1"),
        ("lr", "0", "> 0"),
        ("lr", "-1", "> 0"),
        ("lr", "nan", "float"),
        ("lr", "inf", "float"),
        ("lr", "x", "float"),
        ("dropout", "1", "[0, 1)"),
        ("dropout", "-0.1", "[0, 1)"),
        ("momentum", "1.0", "[0, 1)"),
        ("width", "0", "(0, 16]"),
        ("batch_size", "0", "integer from 1"),
        ("train_subset", "-3", ">= 0"),
        ("dataset", "cifar10", "mnist, fashion_mnist, digits"),
        ("device", "tpu", "auto, cpu, cuda"),
        ("init_seed", "-5", "2**31"),
        ("snapshot_every", "0", ">= 1"),
        ("weight_decay", "2", "[0, 1)"),
    ],
)
def test_bad_values_name_the_parameter(name, value, allowed):
    with pytest.raises(ParamError) as e:
        build_config("single", {name: value})
    msg = str(e.value)
    assert f"'{name}'" in msg and allowed in msg and "\n" not in msg


def test_unknown_parameter():
    with pytest.raises(ParamError, match="unknown parameter 'learning_rate'"):
        build_config("single", {"learning_rate": "0.1"})


def test_clone_needs_pretrain_before_end():
    with pytest.raises(ParamError, match="pretrain_epochs"):
        build_config("clone", {"pretrain_epochs": "5", "epochs": "5"})


def test_group_ignores_the_varying_seed_only():
    a = build_config("same_init", {"shuffle_seed": "1", "lr": "0.05"})
    b = build_config("same_init", {"shuffle_seed": "7", "lr": "0.05"})
    c = build_config("same_init", {"shuffle_seed": "1", "lr": "0.02"})
    d = build_config("same_init", {"shuffle_seed": "1", "lr": "0.05", "init_seed": "2"})
    assert a.group == b.group and a.run_key != b.run_key
    assert a.group != c.group and a.group != d.group
    # plumbing does not split families
    assert a.group == build_config("same_init", {"shuffle_seed": "1", "lr": "0.05", "device": "cpu"}).group
    # same numbers written differently are the same configuration
    assert a.group == build_config("same_init", {"shuffle_seed": "1", "lr": "5e-2"}).group
    assert a.group.startswith("same_init-")


def test_different_init_data_order_follows_init_seed():
    c = build_config("different_init", {"init_seed": "4", "shuffle_seed": "-1"})
    assert c.shuffle_seed == 4
    c2 = build_config("different_init", {"init_seed": "5", "shuffle_seed": "-1"})
    assert c.group == c2.group
    assert build_config("different_init", {"init_seed": "4", "shuffle_seed": "9"}).shuffle_seed == 9


def test_snapshot_epochs_include_init_and_last():
    assert TrainConfig(epochs=25, snapshot_every=10).snapshot_epochs() == [0, 10, 20, 25]
    assert TrainConfig(epochs=3, snapshot_every=1).snapshot_epochs() == [0, 1, 2, 3]


def test_pretrain_config_shared_by_clones():
    a = build_config("clone", {"shuffle_seed": "1", "pretrain_epochs": "2", "epochs": "5"})
    b = build_config("clone", {"shuffle_seed": "3", "pretrain_epochs": "2", "epochs": "5"})
    assert pretrain_config(a).run_key == pretrain_config(b).run_key
    assert pretrain_config(a).epochs == 2 and pretrain_config(a).experiment == "pretrain"


def test_precision_enters_the_group_only_when_not_default():
    # literal values from before the precision field existed: existing groups keep their names
    assert TrainConfig().group == "single-44136fa355b3"
    assert build_config("same_init", {"shuffle_seed": "3", "width": "0.5"}).group == "same_init-a8839a4db07c"
    assert build_config("same_init", {"shuffle_seed": "3", "width": "0.5", "precision": "fp32"}).group \
        == "same_init-a8839a4db07c"
    bf = build_config("same_init", {"shuffle_seed": "3", "width": "0.5", "precision": "bf16"})
    assert bf.group != "same_init-a8839a4db07c"
    assert (
        build_config("same_init", {"shuffle_seed": "4", "width": "0.5", "precision": "bf16"}).group
        == bf.group
    )
    with pytest.raises(
        ParamError, match="parameter 'precision': expected one of fp32, bf16, tf32, got 'fp16'"
    ):
        build_config("single", {"precision": "fp16"})


# -- reading params back as `mlflow run` stores them -------------------------------------------

def _as_mlflow_run_logs(entry: str, params: dict) -> dict[str, str]:
    """The params `mlflow run` logs for this entry point: MLflow's own code on our MLproject."""
    from mlflow.projects._project_spec import load_project

    final, extra = load_project(str(REPO)).get_entry_point(entry).compute_parameters(params, storage_dir=None)
    return {**final, **extra}


def test_mlflow_run_stores_empty_and_spaced_values_quoted():
    # The premise of unquote_param, checked against MLflow itself (it is what broke the analysis).
    stored = _as_mlflow_run_logs("same_init", {"shuffle_seed": 3, "data_dir": "/tmp/my data"})
    assert stored["data_dir"] == "'/tmp/my data'"
    assert _as_mlflow_run_logs("same_init", {"shuffle_seed": 3})["data_dir"] == "''"


@pytest.mark.parametrize("value", ["", "/tmp/my data", "/tmp/plain", "it's", "a'b c", "0.01", "-1", "$HOME",
                                   "  lead", "x\ny"])
def test_unquote_param_inverts_mlflow_quoting(value):
    stored = _as_mlflow_run_logs("same_init", {"shuffle_seed": 1, "data_dir": value})["data_dir"]
    assert unquote_param(stored) == value


@pytest.mark.parametrize("raw", ["/tmp/my data", "plain", "", "it's here", "'unbalanced"])
def test_unquote_param_keeps_values_logged_unquoted(raw):
    # paper and tune log their params themselves, unquoted; those must come back unchanged.
    assert unquote_param(raw) == raw


@pytest.mark.parametrize("data_dir", ["", "/tmp/my data"])
def test_config_from_params_reads_what_mlflow_run_stored(data_dir):
    raw = {"shuffle_seed": "3", "data_dir": data_dir, "width": "0.25", "train_subset": "256", "epochs": "4",
           "snapshot_every": "1", "batch_size": "64"}
    want = build_config("same_init", raw)
    # what a run holds: MLflow's quoted params, then the ones the entry point adds itself
    stored = {**want.to_params(), **_as_mlflow_run_logs("same_init", raw)}
    got = config_from_params(stored)
    assert got == want and got.data_dir == data_dir and got.group == want.group
    assert config_from_params(want.to_params()) == want  # params logged by paper, unquoted


def test_config_from_params_resolves_follow_init_seed_and_unused_pretrain():
    stored = {**_as_mlflow_run_logs("different_init", {"init_seed": 4}), "experiment": "different_init",
              "pretrain_epochs": "0"}
    cfg = config_from_params(stored)
    assert (cfg.experiment, cfg.init_seed, cfg.shuffle_seed, cfg.pretrain_epochs) == (
        "different_init",
        4,
        4,
        0,
    )


def test_config_from_params_names_what_is_missing_or_bad():
    with pytest.raises(ParamError, match="lack dataset"):
        config_from_params({"lr": "0.1", "width": "1.0", "dropout": "0.5"})
    with pytest.raises(ParamError, match="parameter 'lr'"):
        config_from_params({"dataset": "mnist", "width": "1.0", "dropout": "0.5", "lr": "'fast'"})


def test_checkpoint_every_zero_is_every_epoch_on_a_cpu_and_every_tenth_on_cuda():
    from weightspace.config import GPU_CHECKPOINT_EVERY, checkpoint_period

    assert GPU_CHECKPOINT_EVERY == 10
    assert TrainConfig().checkpoint_every == 0
    assert [checkpoint_period(0, d) for d in ("cpu", "cuda")] == [1, 10]
    assert [checkpoint_period(3, d) for d in ("cpu", "cuda")] == [3, 3]
    assert (
        build_config("single", {"checkpoint_every": "0"}).group
        == build_config("single", {"checkpoint_every": "7"}).group
    )
