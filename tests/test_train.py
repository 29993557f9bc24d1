"""Seed semantics, determinism, exact resume and metric values, on tiny real data."""

import numpy as np
import pytest
import torch

from weightspace.config import build_config
from weightspace.data import load_dataset
from weightspace.train import Trainer, weight_stats

torch.set_num_threads(1)
DATA = load_dataset("digits", train_subset=256)
CPU = torch.device("cpu")


def trainer(**kw):
    raw = {
        "width": "0.125",
        "batch_size": "32",
        "lr": "0.05",
        "epochs": "3",
        **{k: str(v) for k, v in kw.items()},
    }
    return Trainer(build_config("single", raw), DATA, CPU)


def test_init_seed_alone_fixes_epoch0():
    a, b = trainer(init_seed=1, shuffle_seed=0), trainer(init_seed=1, shuffle_seed=9)
    assert torch.equal(a.theta(), b.theta())
    assert not torch.equal(a.theta(), trainer(init_seed=2).theta())


def test_shuffle_seed_changes_epoch1_and_cpu_is_deterministic():
    a, b, c = trainer(shuffle_seed=0), trainer(shuffle_seed=0), trainer(shuffle_seed=1)
    for t in (a, b, c):
        t.train_epoch()
    assert torch.equal(a.theta(), b.theta())  # bitwise
    assert not torch.equal(a.theta(), c.theta())


def test_dropout_masks_follow_shuffle_seed():
    """Masks come from the model's own generator (seeded from shuffle_seed), never the global RNG.

    Each check fails if dropout drew from the global RNG (e.g. ``F.dropout``): (1) a different
    global RNG state must not change the result; (2) with the same global state, a different
    dropout stream alone must change it; (3) an epoch leaves the global RNG untouched.
    """
    # (1) identical runs under different global RNG states: bitwise identical weights
    a, b = trainer(shuffle_seed=0), trainer(shuffle_seed=0)
    torch.manual_seed(1)
    a.train_epoch()
    torch.manual_seed(2)
    torch.rand(1000)  # advance it too, not only reseed
    b.train_epoch()
    assert torch.equal(a.theta(), b.theta())

    # (2) the same global RNG state and the same data order, only the dropout stream differs
    c, d = trainer(shuffle_seed=0), trainer(shuffle_seed=0)
    d.model.dropout_gen.manual_seed(12345)
    torch.manual_seed(7)
    c.train_epoch()
    torch.manual_seed(7)
    d.train_epoch()
    assert not torch.equal(c.theta(), d.theta())
    # ... and that stream is the one shuffle_seed seeds: resetting it to its seed restores equality
    e = trainer(shuffle_seed=0)
    e.model.dropout_gen.manual_seed(12345)
    e.model.dropout_gen.set_state(trainer(shuffle_seed=0).model.dropout_gen.get_state())
    torch.manual_seed(8)
    e.train_epoch()
    assert torch.equal(e.theta(), c.theta())

    # (3) training draws its masks from dropout_gen and nothing from the global RNG
    f = trainer(shuffle_seed=0)
    gen_before, global_before = f.model.dropout_gen.get_state(), torch.get_rng_state()
    f.train_epoch()
    assert not torch.equal(f.model.dropout_gen.get_state(), gen_before)
    assert torch.equal(torch.get_rng_state(), global_before)


def test_resume_from_state_is_bitwise_exact():
    ref = trainer(shuffle_seed=3)
    for _ in range(3):
        ref.train_epoch()
    first = trainer(shuffle_seed=3)
    first.train_epoch()
    state = {k: v.clone() for k, v in first.state_tensors().items()}
    resumed = trainer(shuffle_seed=3)
    resumed.load_state_tensors(state)
    assert resumed.epoch == 1
    resumed.train_epoch(), resumed.train_epoch()
    assert torch.equal(resumed.theta(), ref.theta())


def test_eval_metrics_against_numpy():
    t = trainer()
    t.train_epoch()
    t.model.eval()
    with torch.no_grad():
        logits = t.model(DATA.x_train).double().numpy()
    y = DATA.y_train.numpy()
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    want_loss = -logp[np.arange(len(y)), y].mean()
    want_acc = (logits.argmax(1) == y).mean()
    for batch in (50, 0):  # batch size must not matter; 0 = the device's default
        got = t.evaluate(DATA.x_train, DATA.y_train, batch=batch)
        assert got.loss == pytest.approx(want_loss, rel=1e-5)
        assert got.accuracy == pytest.approx(want_acc, abs=1e-12)


def test_weight_stats_against_numpy():
    rng = np.random.default_rng(0)
    t, t0, tp = (torch.from_numpy(rng.normal(size=1000).astype(np.float32)) for _ in range(3))
    s = weight_stats(t, t0, tp)
    assert s["weight_norm"] == pytest.approx(np.linalg.norm(t.numpy().astype(np.float64)), rel=1e-12)
    assert s["distance_from_init"] == pytest.approx(
        np.linalg.norm((t - t0).numpy().astype(np.float64)), rel=1e-6
    )
    assert s["step_length"] == pytest.approx(np.linalg.norm((t - tp).numpy().astype(np.float64)), rel=1e-6)
    assert "step_length" not in weight_stats(t, t0, None)


def test_bf16_runs_the_step_in_bfloat16_and_keeps_fp32_state():
    seen = []
    t = trainer(precision="bf16", shuffle_seed=0)
    hook = t.model.conv2.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    t.train_epoch()
    hook.remove()
    assert seen and set(seen) == {torch.bfloat16}
    assert t.theta().dtype == torch.float32
    assert all(s["momentum_buffer"].dtype == torch.float32 for s in t.opt.state.values())
    # evaluation stays fp32 whatever the training precision
    seen.clear()
    hook = t.model.conv2.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    t.epoch_metrics()
    hook.remove()
    assert set(seen) == {torch.float32}


def test_bf16_is_deterministic_and_close_to_fp32():
    a, b, f = trainer(precision="bf16"), trainer(precision="bf16"), trainer(precision="fp32")
    start = f.theta().clone()
    for t in (a, b, f):
        t.train_epoch()
    assert torch.equal(a.theta(), b.theta())  # bitwise on the CPU
    assert not torch.equal(a.theta(), f.theta())
    # bfloat16 has an 8-bit mantissa: the step differs by rounding noise, not in direction
    step_bf, step_fp = a.theta() - start, f.theta() - start
    cos = float(torch.dot(step_bf, step_fp) / (step_bf.norm() * step_fp.norm()))
    assert cos > 0.95
    assert float((step_bf - step_fp).norm() / step_fp.norm()) < 0.3
