"""Weight matching (Git Re-Basin): permuted networks are the same function, and matching finds them."""

import numpy as np
import pytest
import torch
from torch import nn

from weightspace.analysis.alignment import align, apply_permutation, permutation_spec, weight_matching
from weightspace.model import Layout, build_model, flat_params, load_flat, widths

WIDTH = 0.25  # c1=8, c2=16, h=61


def model_and_theta(seed: int):
    m = build_model(WIDTH, 0.5, init_seed=seed)
    return m, flat_params(m).numpy(), Layout.of(m)


def random_perms(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    c1, c2, h = widths(WIDTH)
    perms = {"conv1": rng.permutation(c1), "conv2": rng.permutation(c2), "fc1": rng.permutation(h)}
    assert all((p != np.arange(len(p))).any() for p in perms.values())
    return perms


def by_hand(theta: np.ndarray, layout: Layout, perms: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The permuted network's parameters, written out layer by layer, independently of the module."""
    w = {
        n: theta[o : o + int(np.prod(s))].reshape(s)
        for n, s, o in zip(layout.names, layout.shapes, layout.offsets)
    }
    p1, p2, p3 = perms["conv1"], perms["conv2"], perms["fc1"]
    h, c2 = w["fc1.weight"].shape[0], len(p2)
    return {"conv1.weight": w["conv1.weight"][p1], "conv1.bias": w["conv1.bias"][p1],
            "conv2.weight": w["conv2.weight"][p2][:, p1], "conv2.bias": w["conv2.bias"][p2],
            "fc1.weight": w["fc1.weight"][p3].reshape(h, c2, 49)[:, p2].reshape(h, c2 * 49),
            "fc1.bias": w["fc1.bias"][p3], "fc2.weight": w["fc2.weight"][:, p3], "fc2.bias": w["fc2.bias"]}


def inner(theta_a, theta_b, layout, perms) -> float:
    """sum over layers of <W_A, permuted W_B>, in float64."""
    a = by_hand(theta_a.astype(np.float64), layout, {k: np.arange(len(v)) for k, v in perms.items()})
    b = by_hand(theta_b.astype(np.float64), layout, perms)
    return float(sum(np.sum(a[n] * b[n]) for n in a))


def dist(x, y) -> float:
    return float(np.linalg.norm(x.astype(np.float64) - y.astype(np.float64)))


def test_permuted_network_computes_the_same_function():
    m, theta, layout = model_and_theta(1)
    perms = random_perms(10)
    theta_p = apply_permutation(theta, layout, perms)
    assert theta_p.dtype == np.float32 and theta_p.shape == theta.shape
    assert dist(theta_p, theta) > 1.0  # really moved
    np.testing.assert_array_equal(
        theta_p, np.concatenate([v.ravel() for v in by_hand(theta, layout, perms).values()])
    )
    assert sorted(theta_p) == sorted(theta)  # a reordering, nothing else
    m2 = build_model(WIDTH, 0.5, init_seed=2)
    load_flat(m2, theta_p)
    m.eval(), m2.eval()
    x = torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y, y2 = m(x), m2(x)
    assert y.abs().max() > 0.01
    torch.testing.assert_close(y2, y)


@pytest.mark.parametrize("perm_seed", [10, 11, 12])
def test_matching_recovers_a_known_permutation(perm_seed):
    _, theta_a, layout = model_and_theta(1)
    perms = random_perms(perm_seed)
    theta_b = apply_permutation(theta_a, layout, perms)
    found = weight_matching(theta_a, theta_b, layout)
    back = apply_permutation(theta_b, layout, found)
    assert dist(back, theta_a) == pytest.approx(0.0, abs=1e-6)
    for k, p in perms.items():  # found undoes perms: found[k] is perms[k]'s inverse
        np.testing.assert_array_equal(p[found[k]], np.arange(len(p)))
    aligned, perms2 = align(theta_a, theta_b, layout)
    np.testing.assert_array_equal(aligned, back)
    assert all(np.array_equal(perms2[k], found[k]) for k in found)


def test_aligned_distance_never_exceeds_unaligned():
    _, theta_a, layout = model_and_theta(1)
    _, theta_other, _ = model_and_theta(2)
    rms = float(np.sqrt(np.mean(theta_a.astype(np.float64) ** 2)))  # noise at 30% of the weights' scale
    noisy = theta_a + (0.3 * rms * np.random.default_rng(0).standard_normal(theta_a.shape)).astype(np.float32)
    noisy_permuted = apply_permutation(noisy, layout, random_perms(3))
    results = {}
    for label, theta_b in {
        "other init": theta_other,
        "noisy copy": noisy,
        "noisy permuted copy": noisy_permuted,
    }.items():
        aligned, _ = align(theta_a, theta_b, layout)
        results[label] = (dist(theta_a, aligned), dist(theta_a, theta_b))
        assert results[label][0] <= results[label][1] + 1e-6, label
        assert dist(aligned, np.zeros_like(aligned)) == pytest.approx(
            dist(theta_b, np.zeros_like(theta_b)), rel=1e-6
        )
    d_aligned, d_unaligned = results["other init"]
    assert d_aligned < d_unaligned - 1e-3  # two inits: matching strictly improves on the identity
    d_aligned, d_unaligned = results["noisy permuted copy"]
    assert d_aligned < 0.5 * d_unaligned
    assert d_aligned == pytest.approx(dist(theta_a, noisy), rel=1e-5)  # recovers the noisy copy's order


@pytest.mark.parametrize("seed", [0, 1])
def test_objective_is_non_decreasing_and_matches_an_independent_computation(seed):
    _, theta_a, layout = model_and_theta(1)
    _, theta_b, _ = model_and_theta(2)
    history = []
    perms = weight_matching(theta_a, theta_b, layout, seed=seed, history=history)
    assert len(history) >= 3  # identity, at least one improving sweep, the final sweep that changes nothing
    values = [obj for obj, _ in history]
    for obj, p in history:
        assert obj == pytest.approx(inner(theta_a, theta_b, layout, p), rel=1e-10)
    assert all(later >= earlier for earlier, later in zip(values, values[1:]))
    assert values[-1] > values[0]
    assert all(np.array_equal(history[-1][1][k], perms[k]) for k in perms)
    aligned = apply_permutation(
        theta_b, layout, perms
    )  # the objective is the inner product of the flat vectors
    assert values[-1] == pytest.approx(
        float(np.dot(theta_a.astype(np.float64), aligned.astype(np.float64))), rel=1e-10
    )


def test_result_is_a_fixed_point_no_swap_of_two_units_improves():
    """Each permutation is an optimal assignment given the others, so in particular 2-swap optimal."""
    _, theta_a, layout = model_and_theta(1)
    _, theta_b, _ = model_and_theta(2)
    perms = weight_matching(theta_a, theta_b, layout)
    best = inner(theta_a, theta_b, layout, perms)
    for k, p in perms.items():
        for i in range(len(p)):
            for j in range(i + 1, len(p)):
                q = p.copy()
                q[[i, j]] = q[[j, i]]
                assert inner(theta_a, theta_b, layout, {**perms, k: q}) <= best + 1e-9 * abs(best), (k, i, j)


def test_a_layout_it_does_not_know_raises():
    mlp = nn.Sequential(nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 10))
    with pytest.raises(ValueError, match="supports only weightspace.model.CNN") as err:
        permutation_spec(Layout.of(mlp))
    assert "0.weight" in str(err.value) and "\n" not in str(err.value)  # names what it got, on one line
    with pytest.raises(ValueError, match="supports only"):
        weight_matching(np.zeros(89610, np.float32), np.zeros(89610, np.float32), Layout.of(mlp))
    _, theta, layout = model_and_theta(1)
    shapes = list(layout.shapes)
    i = layout.names.index("fc1.weight")
    shapes[i] = (shapes[i][0], shapes[i][1] + 1)  # fc1 columns no longer 49 per conv2 channel
    with pytest.raises(ValueError, match="axis 1 of fc1.weight"):
        permutation_spec(Layout(layout.names, tuple(shapes), layout.offsets))
    with pytest.raises(ValueError, match="not a permutation"):
        apply_permutation(theta, layout, {"conv1": np.zeros(8, int)})
    with pytest.raises(ValueError, match="unknown permutations"):
        apply_permutation(theta, layout, {"conv3": np.arange(8)})
    with pytest.raises(ValueError, match="shape"):
        apply_permutation(theta[:-1], layout, {})
