"""Hessian-vector products for every differentiable model: forward-over-reverse where PyTorch has
forward-mode derivatives, reverse-over-reverse where it has not, both against dense Hessians."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_record import env  # noqa: F401 - the fixture: the recorder and the analysis log into the test's store
from torch import nn
from torch.func import functional_call, grad, jvp
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from weightspace.analysis.derivatives import FORWARD, HVP_MODES, REVERSE, hvp, hvp_and_mode, top_hessian_eig
from weightspace.model import Layout

torch.set_num_threads(1)
# Tolerances relative to the largest |Hv|: float64 paths agree with each other to rounding; float32 (what
# the probes run in) to float32 rounding of a few hundred summed products.
RTOL = {torch.float64: 1e-9, torch.float32: 2e-4}
RTOL_FD = 1e-6    # central differences of the float64 gradient, step 1e-5: truncation and rounding ~1e-9


class Last(nn.Module):
    """A sequence model's last step through a linear head."""

    def __init__(self, body: nn.Module, width: int):
        super().__init__()
        self.body, self.head = body, nn.Linear(width, 3)

    def forward(self, x):
        out = self.body(x)
        out = out[0] if isinstance(out, tuple) else out
        return self.head(out[:, -1])


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.att, self.head = nn.MultiheadAttention(4, 2, batch_first=True), nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.att(x, x, x, need_weights=False)[0].mean(1))


class Embed(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.head = nn.Embedding(7, 4), nn.Linear(4, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.emb(x)).mean(1))


def _batchnorm():
    m = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3))
    m[1].running_mean.uniform_(-0.5, 0.5)
    m[1].running_var.uniform_(0.5, 2.0)
    return m


SEQ = lambda: torch.randn(5, 6, 4)  # noqa: E731 - (batch, steps, features)
FAMILIES = {
    "lstm": (lambda: Last(nn.LSTM(4, 5, batch_first=True), 5), SEQ),
    "gru": (lambda: Last(nn.GRU(4, 5, batch_first=True), 5), SEQ),
    "multihead_attention": (Attention, SEQ),
    "transformer_encoder_layer": (
        lambda: Last(nn.TransformerEncoderLayer(4, 2, 8, dropout=0.0, batch_first=True), 4), SEQ),
    "layernorm": (lambda: nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 3)),
                  lambda: torch.randn(5, 4)),
    "batchnorm_eval": (_batchnorm, lambda: torch.randn(5, 4)),
    "embedding": (Embed, lambda: torch.randint(0, 7, (5, 6))),
    "conv2d": (lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)),
               lambda: torch.randn(5, 1, 6, 6)),
}


def loss_of(family: str, dtype: torch.dtype):
    """(f(θ), θ) for a tiny eval-mode model of the family: mean cross-entropy on 5 samples."""
    torch.manual_seed(0)
    make, inputs = FAMILIES[family]
    model = make().eval()
    x, y = inputs(), torch.randint(0, 3, (5,))
    model = model.to(dtype)
    x = x.to(dtype) if x.is_floating_point() else x
    layout = Layout.of(model)
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return (lambda th: F.cross_entropy(functional_call(model, layout.unflatten(th), (x,)), y)), theta


def forward_mode_works(f, theta) -> bool:
    """Whether the model's gradient has forward-mode derivatives (attention in its math kernel, as the HVPs
    run it; under grad, multi-head attention leaves its no-grad fast path)."""
    try:
        with sdpa_kernel(SDPBackend.MATH):
            jvp(grad(f), (theta,), (torch.ones_like(theta),))
    except (NotImplementedError, RuntimeError):
        return False
    return True


def dense_hessian(f, theta, eps: float = 1e-5) -> torch.Tensor:
    """The float64 Hessian by central differences of the exact gradient, column by column: independent of
    both second-order paths (torch.func.hessian is not: its vmapped jacobian of LayerNorm's backward
    is asymmetric in torch 2.14, while the per-vector products are not)."""
    g = grad(f)
    eye = torch.eye(theta.numel(), dtype=torch.float64)
    with sdpa_kernel(SDPBackend.MATH):
        return torch.stack([(g(theta + eps * e) - g(theta - eps * e)) / (2 * eps) for e in eye], 1)


@pytest.mark.parametrize("family", FAMILIES)
def test_both_paths_equal_the_dense_hessian(family):
    """In float64 every family's Hessian-vector products equal the dense Hessian times v on each path that
    exists, and the two paths each other; in float32 the automatic path agrees with the float64 product."""
    f64, th64 = loss_of(family, torch.float64)
    H = dense_hessian(f64, th64)
    scale = float(H.abs().max())
    assert float((H - H.T).abs().max()) <= RTOL_FD * scale
    v = torch.randn(th64.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    want = (H @ v).numpy()
    tol = RTOL_FD * np.abs(want).max()
    got = {}
    for mode in HVP_MODES:
        if mode == FORWARD and not forward_mode_works(f64, th64):
            continue
        got[mode] = hvp(f64, th64, v, mode).numpy()
        np.testing.assert_allclose(got[mode], want, atol=tol, err_msg=f"{family} {mode}")
    if len(got) == 2:
        np.testing.assert_allclose(got[FORWARD], got[REVERSE], atol=RTOL[torch.float64] * np.abs(want).max())
    # float32, the probes' dtype: the automatic choice, and both paths against each other where both exist
    f32, th32 = loss_of(family, torch.float32)
    hv32, mode = hvp_and_mode(f32, th32, v.float())
    assert mode == (FORWARD if forward_mode_works(f32, th32) else REVERSE)
    tol32 = RTOL[torch.float32] * np.abs(want).max()
    np.testing.assert_allclose(hv32.double().numpy(), want, atol=tol32, err_msg=family)
    if mode == FORWARD:
        np.testing.assert_allclose(hvp(f32, th32, v.float(), REVERSE).numpy(), hv32.numpy(), atol=tol32)


def test_the_recurrent_kernels_take_the_fallback():
    """PyTorch's CPU LSTM kernel (oneDNN) has no forward-mode derivative in float32: the fallback is what
    makes its curvature measurable; without oneDNN the same model takes the forward path."""
    f, th = loss_of("lstm", torch.float32)
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN recurrent kernel")
    assert hvp_and_mode(f, th, torch.ones_like(th))[1] == REVERSE
    with torch.backends.mkldnn.flags(enabled=False):
        assert hvp_and_mode(f, th, torch.ones_like(th))[1] == FORWARD


class Cube(torch.autograd.Function):
    """x³ with a backward but no jvp: no forward-mode derivative on any machine."""

    @staticmethod
    def forward(x):
        return x ** 3

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * x ** 2 * g


def test_the_mode_is_chosen_by_forward_mode_support_and_kept():
    th = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    v = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    cube = lambda t: Cube.apply(t).sum()  # noqa: E731 - Hessian diag(6x)
    plain = lambda t: (t ** 3).sum()      # noqa: E731
    for f, mode in ((cube, REVERSE), (plain, FORWARD)):
        hv, got = hvp_and_mode(f, th, v)
        assert got == mode
        np.testing.assert_allclose(hv.numpy(), (6 * th * v).numpy(), rtol=1e-12)
    with pytest.raises(NotImplementedError, match="jvp"):
        hvp(cube, th, v, FORWARD)       # a mode given is used as given
    with pytest.raises(ValueError, match="hvp mode"):
        hvp(plain, th, v, "sideways")
    # a real error is not hidden by the fallback: it raises again on the reverse path
    with pytest.raises(RuntimeError):
        hvp(lambda t: t[:2] @ t, th, v)
    # power iteration keeps the mode of its first product, and finds max |6x| = 12
    r = top_hessian_eig(cube, th, iters=50, tol=1e-12)
    assert r.mode == REVERSE and r.value == pytest.approx(12.0, rel=1e-9)
    assert top_hessian_eig(plain, th, iters=50, tol=1e-12).mode == FORWARD


# -- a recorded LSTM group, analysed with the default probes --------------------------------------------

class RowLSTM(nn.Module):
    """An LSTM over an image's rows and a linear head on its last step: the issue's new user's model."""

    def __init__(self, rows: int = 6, hidden: int = 8, classes: int = 3):
        super().__init__()
        self.rnn, self.head = nn.LSTM(rows, hidden, batch_first=True), nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


def row_images(n_train: int = 96, n_test: int = 48):
    """(x_train, y_train, x_test, y_test): 6x6 random images, labelled by which third of the rows is
    brightest."""
    x = torch.rand(n_train + n_test, 6, 6, generator=torch.Generator().manual_seed(0))
    y = x.reshape(-1, 3, 12).sum(2).argmax(1)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def lstm_probe():
    """The probe function the runs name: model, loss (None: cross-entropy) and data."""
    return RowLSTM(), None, row_images()


def record_lstm_group(group: str, seeds=(1, 2, 3), epochs: int = 3) -> None:
    import weightspace

    x, y, _, _ = row_images()
    for seed in seeds:
        torch.manual_seed(seed)
        model = RowLSTM()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        with weightspace.record(model, group=group, seed=seed, epochs=epochs,
                                probe=f"{__name__}:lstm_probe") as rec:
            for e in range(1, epochs + 1):
                for idx in torch.randperm(len(y),
                                          generator=torch.Generator().manual_seed(seed + e)).split(16):
                    opt.zero_grad()
                    F.cross_entropy(model(x[idx]), y[idx]).backward()
                    opt.step()
                rec.epoch_end(e, {"train_loss": float(F.cross_entropy(model(x), y))})


@pytest.mark.e2e
def test_a_recorded_lstm_group_finishes_its_analysis_with_a_hessian(env, tmp_path):  # noqa: F811
    """The issue's failure: forward-mode AD through the CPU LSTM kernel took the whole analysis down. With
    the default probes the analysis now finishes, with the top Hessian eigenvalue by the double backward
    and the pairs aligned by the LSTM's permutation spec."""
    from weightspace.workflows.analysis_runs import AnalysisOptions, run_analysis

    record_lstm_group("lstm")
    run_analysis(AnalysisOptions(group="lstm", probe=f"{__name__}:lstm_probe"))
    (a,) = env.runs("tags.`weightspace.analysed_group` = 'lstm'")
    assert a.info.status == "FINISHED" and a.data.tags["weightspace.family"] == "recorded"
    assert not [k for k in a.data.tags if k.startswith("weightspace.probe_error.")]
    m = a.data.metrics
    assert np.isfinite(m["hessian_top_eig_epoch0_run0"]) and m["hessian_iters_epoch0_run0"] >= 1
    assert a.data.params["hvp_mode"] == (REVERSE if torch.backends.mkldnn.is_available() else FORWARD)
    assert {"pca_evr_top2", "grad_norm_final_run0", "pair_barrier_frankle_mean", "disagreement_mean",
            "surface_grid", "pair_barrier_aligned_frankle_mean", "aligned_final_pairwise_dist_mean"} <= set(m)
    assert m["aligned_final_pairwise_dist_mean"] < m["final_pairwise_dist_mean"]   # the LSTM's spec, derived
    report = open(env.client().download_artifacts(a.info.run_id, "report.md", str(tmp_path))).read()
    assert "top Hessian eig (eval mode) at epoch 0" in report
    assert "failed" not in report, [line for line in report.splitlines() if "failed" in line]
