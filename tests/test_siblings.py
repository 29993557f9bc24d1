"""Siblings trained together follow the same trajectories as when trained one by one."""

import pytest
import torch

from weightspace.config import TrainConfig
from weightspace.data import load_dataset
from weightspace.siblings import BatchedTrainer
from weightspace.train import Trainer

SEEDS = [(0, 0), (1, 1), (0, 2)]  # different init, and same init with a different shuffle


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits", train_subset=300)


def _trainers(data, **kw):
    # batch 128 on 300 samples leaves a partial last batch of 44
    cfg = dict(dataset="digits", train_subset=300, width=0.125, dropout=0.5, momentum=0.9, weight_decay=1e-4,
               lr=0.05, batch_size=128)
    return [Trainer(TrainConfig(**cfg, init_seed=i, shuffle_seed=s, **kw), data, torch.device("cpu"))
            for i, s in SEEDS]


def test_batched_equals_sequential(data):
    seq, bat = _trainers(data), _trainers(data)
    seq_losses = [float(t.train_epoch()) for _ in range(2) for t in seq]
    bt = BatchedTrainer(bat)
    bat_losses = [float(v) for _ in range(2) for v in bt.train_epoch()]

    assert seq_losses == pytest.approx(bat_losses, abs=1e-5)
    for a, b in zip(seq, bat):
        assert b.epoch == a.epoch == 2
        assert (a.theta() - b.theta()).abs().max() < 1e-5
        assert torch.equal(a.order_gen.get_state(), b.order_gen.get_state())
        assert torch.equal(a.model.dropout_gen.get_state(), b.model.dropout_gen.get_state())
        for pa, pb in zip(a.model.parameters(), b.model.parameters()):
            ba, bb = a.opt.state[pa]["momentum_buffer"], b.opt.state[pb]["momentum_buffer"]
            assert (ba - bb).abs().max() < 1e-5
        # and the sequential path continues from the batched state as from its own
        assert float(a.train_epoch()) == pytest.approx(float(b.train_epoch()), abs=1e-5)


def test_rejects_mismatched_siblings(data):
    a, b = _trainers(data)[:2]
    b.opt.param_groups[0]["lr"] = 0.1
    with pytest.raises(ValueError, match="lr"):
        BatchedTrainer([a, b])


def test_batched_bf16_follows_sequential_bf16(data):
    seq, bat = _trainers(data, precision="bf16"), _trainers(data, precision="bf16")
    start = [t.theta().clone() for t in seq]
    for t in seq:
        t.train_epoch()
    bt = BatchedTrainer(bat)
    seen = []
    bt.base.conv2.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    bt.train_epoch()
    assert seen and set(seen) == {torch.bfloat16}  # the vmapped convolutions run in bf16 too
    steps = [t.theta() - s for t, s in zip(seq, start)]
    for a, b, s in zip(steps, bat, start):
        # Grouped and ordinary bf16 convolutions round differently, so the steps agree up to
        # bf16 noise (about 5% here, as much as bf16 differs from fp32), not to 1e-5 as in fp32.
        assert float(((b.theta() - s) - a).norm() / a.norm()) < 0.15
    # the bound separates: a sibling with another shuffle seed took a genuinely different step
    assert float((steps[2] - steps[0]).norm() / steps[0].norm()) > 0.5


def test_rejects_mixed_precision_siblings(data):
    a, b = _trainers(data)[0], _trainers(data, precision="bf16")[1]
    with pytest.raises(ValueError, match="precision"):
        BatchedTrainer([a, b])


def test_batched_evaluation_equals_one_by_one(data):
    ts = _trainers(data)
    for t in ts:
        t.train_epoch()
    one = [t.epoch_metrics() for t in ts]
    bt = BatchedTrainer(ts)
    together = bt.evaluate_all()  # one vmapped forward per batch for all three
    for a, b in zip(one, together):
        assert a.keys() == b.keys()
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-7), k
    # on the CPU each sibling keeps evaluating itself (measured faster there); on CUDA the
    # trainers are served by their BatchedTrainer, once per epoch
    assert all(t.batched is None for t in ts)
    for t in ts:
        t.batched = bt
    assert [t.epoch_metrics() for t in ts] == together and bt._metrics[0] == 1
    bt.train_epoch()
    assert [t.epoch_metrics()["train_loss"] for t in ts] != [m["train_loss"] for m in together]  # recomputed
