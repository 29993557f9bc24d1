import pytest

from weightspace.config import ParamError, TrainConfig, build_config, pretrain_config


@pytest.mark.parametrize("name, value, allowed", [
    ("epochs", "abc", "integer"), ("epochs", "0", "integer from 1"), ("epochs", "2.5", "integer"),
    ("epochs", "", "integer"), ("epochs", "10000000000", "integer from 1"),
    ("lr", "0", "> 0"), ("lr", "-1", "> 0"), ("lr", "nan", "float"), ("lr", "inf", "float"), ("lr", "x", "float"),
    ("dropout", "1", "[0, 1)"), ("dropout", "-0.1", "[0, 1)"), ("momentum", "1.0", "[0, 1)"),
    ("width", "0", "(0, 16]"), ("batch_size", "0", "integer from 1"), ("train_subset", "-3", ">= 0"),
    ("dataset", "cifar10", "mnist, fashion_mnist, digits"), ("device", "tpu", "auto, cpu, cuda"),
    ("init_seed", "-5", "2**31"), ("snapshot_every", "0", ">= 1"), ("weight_decay", "2", "[0, 1)"),
])
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
    assert build_config("same_init", {"shuffle_seed": "4", "width": "0.5", "precision": "bf16"}).group == bf.group
    with pytest.raises(ParamError, match="parameter 'precision': expected one of fp32, bf16, got 'fp16'"):
        build_config("single", {"precision": "fp16"})
