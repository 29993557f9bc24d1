import numpy as np
import pytest
import torch

from weightspace.model import CNN, PAPER_N_PARAMS, Layout, build_model, flat_params, load_flat, n_params


def closed_form(c1, c2, h):
    # conv 5x5 (1->c1), conv 5x5 (c1->c2), fc (c2*7*7 -> h), fc (h -> 10), each with biases
    return (25 * 1 + 1) * c1 + (25 * c1 + 1) * c2 + (c2 * 49 + 1) * h + (h + 1) * 10


def test_paper_sized_parameter_count():
    n = n_params(CNN(width=1.0))
    assert n == closed_form(32, 64, 244) == 819_974
    assert abs(n - PAPER_N_PARAMS) / PAPER_N_PARAMS < 0.01


def test_width_scales_channels_and_hidden():
    assert n_params(CNN(width=0.5)) == closed_form(16, 32, 122)
    assert n_params(CNN(width=0.125)) == closed_form(4, 8, 30)


def test_layout_roundtrip_and_forward():
    m = build_model(0.25, 0.5, init_seed=3)
    lay = Layout.of(m)
    v = flat_params(m)
    assert lay.size == v.numel() == n_params(m)
    lay2 = Layout.from_json(lay.to_json())
    assert lay2 == lay
    parts = lay.unflatten(v)
    for name, p in m.named_parameters():
        assert torch.equal(parts[name], p.detach())
    m2 = build_model(0.25, 0.5, init_seed=4)
    load_flat(m2, v.numpy())
    assert torch.equal(flat_params(m2), v)
    m.eval()
    assert m(torch.zeros(5, 1, 28, 28)).shape == (5, 10)


def test_eval_has_no_dropout_and_masks_are_scaled():
    m = build_model(0.125, 0.5, 0)
    x = torch.randn(8, 1, 28, 28)
    m.eval()
    assert torch.equal(m(x), m(x))
    m.train()
    m.dropout_gen = torch.Generator().manual_seed(1)
    m1, m2 = m.dropout_masks(1000, torch.device("cpu"))
    vals = set(np.unique(m1.numpy()).tolist())
    assert vals == {0.0, 2.0}
    assert abs(m1.mean().item() - 1.0) < 0.05


@pytest.mark.parametrize("batch", [1, 44, 128])
def test_one_draw_for_both_dropout_masks_equals_two_successive_draws(batch):
    """The masks come from one bernoulli_ call; on the CPU that is bit for bit the two calls it replaced."""
    m = CNN(width=0.25, dropout=0.3).train()
    m.dropout_gen = torch.Generator().manual_seed(11)
    m1, m2 = m.dropout_masks(batch, torch.device("cpu"))
    g = torch.Generator().manual_seed(11)
    r1 = torch.empty(batch, m.fc1.in_features).bernoulli_(0.7, generator=g).div_(0.7)
    r2 = torch.empty(batch, m.fc1.out_features).bernoulli_(0.7, generator=g).div_(0.7)
    assert torch.equal(m1, r1) and torch.equal(m2, r2)
    assert torch.equal(m.dropout_gen.get_state(), g.get_state())


@pytest.mark.parametrize("shape", [(3, 4, 28, 28), (2, 16, 14, 14), (1, 1, 2, 2)])
def test_fast_pooling_gives_max_pool2d_numbers_without_autograd(shape):
    from torch.nn import functional as F

    from weightspace.model import pool2

    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g)
    x[0, 0, :2, :2] = 0.5                       # a tied window
    x[-1, -1, -2:, -2:] = float("nan")          # NaN propagates as in max_pool2d
    with torch.no_grad():
        got = pool2(x)
    want = F.max_pool2d(x, 2)
    assert got.shape == want.shape and torch.equal(torch.nan_to_num(got, 7.0), torch.nan_to_num(want, 7.0))
    assert torch.isnan(got).sum() == torch.isnan(want).sum() >= 1


def test_pooling_with_autograd_sends_a_tied_windows_gradient_to_one_element():
    from weightspace.model import pool2

    x = torch.zeros(1, 1, 2, 2, requires_grad=True)   # all four tied, as on MNIST's background
    pool2(x).sum().backward()
    assert sorted(x.grad.flatten().tolist()) == [0.0, 0.0, 0.0, 1.0]   # F.max_pool2d's rule, not 1/4 each


def test_odd_sizes_fall_back_to_max_pool2d_flooring():
    from torch.nn import functional as F

    from weightspace.model import pool2

    x = torch.randn(2, 3, 7, 7)
    with torch.no_grad():
        assert torch.equal(pool2(x), F.max_pool2d(x, 2)) and pool2(x).shape[-1] == 3


def test_the_model_predicts_the_same_numbers_with_and_without_autograd():
    from weightspace.model import CNN

    torch.manual_seed(0)
    m = CNN(0.25).eval()
    x = torch.randn(64, 1, 28, 28)
    with torch.no_grad():
        fast = m(x)
    assert torch.equal(fast, m(x).detach())
