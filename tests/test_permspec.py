"""Permutation specs of recorded models: a planted permutation is recovered exactly, the function
unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from weightspace.analysis.alignment import align, apply_permutation
from weightspace.analysis.permspec import NoSpec, spec_for
from weightspace.model import Layout

torch.set_num_threads(1)


class RowLSTM(nn.Module):
    def __init__(self, layers: int = 2):
        super().__init__()
        self.rnn, self.head = nn.LSTM(5, 7, num_layers=layers, batch_first=True), nn.Linear(7, 3)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


class Normed(nn.Module):
    """Linear, LayerNorm, Linear: no chain (LayerNorm has parameters), so it declares its symmetry."""

    permutation_spec = {"hidden": [("fc1.weight", 0), ("fc1.bias", 0), ("norm.weight", 0), ("norm.bias", 0),
                                   ("fc2.weight", 1)]}

    def __init__(self):
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(4, 9), nn.LayerNorm(9), nn.Linear(9, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.norm(self.fc1(x))))


class Backwards(nn.Module):
    """Registered head first: registration order is not the data flow, which the check catches."""

    def __init__(self):
        super().__init__()
        self.head, self.body = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        return self.head(torch.tanh(self.body(x)))


MODELS = {
    "mlp": (
        lambda: nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 8), nn.Tanh(), nn.Linear(8, 3)),
        lambda: torch.randn(16, 6),
    ),
    "cnn": (
        lambda: nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 6, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(6 * 4 * 4, 5),
            nn.ReLU(),
            nn.Linear(5, 3),
        ),
        lambda: torch.randn(16, 1, 8, 8),
    ),
    "lstm": (RowLSTM, lambda: torch.randn(16, 6, 5)),
    "declared": (Normed, lambda: torch.randn(16, 4)),
}
N_PERMS = {"mlp": 2, "cnn": 3, "lstm": 2, "declared": 1}


def setup(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    make, inputs = MODELS[kind]
    m = make().eval()
    layout = Layout.of(m)
    theta = torch.cat([p.detach().reshape(-1) for p in m.parameters()])
    return m, layout, theta, inputs()


def outputs(m, layout, theta, x):
    with torch.no_grad():
        return functional_call(m, layout.unflatten(torch.as_tensor(theta)), (x,))


@pytest.mark.parametrize("kind", MODELS)
def test_a_planted_permutation_is_recovered_exactly_and_the_function_is_unchanged(kind):
    m, layout, theta, x = setup(kind)
    spec = spec_for(m, layout, theta, x)
    assert len(spec.sizes) == N_PERMS[kind]
    rng = np.random.default_rng(1)
    planted = {k: rng.permutation(n) for k, n in spec.sizes.items()}
    planted = {k: p if (p != np.arange(len(p))).any() else p[::-1].copy() for k, p in planted.items()}
    a = theta.numpy()
    b = apply_permutation(a, layout, planted, spec)
    assert np.linalg.norm(b - a) > 0.1 * np.linalg.norm(a)                      # really moved
    torch.testing.assert_close(outputs(m, layout, b, x), outputs(m, layout, a, x), rtol=1e-5, atol=1e-6)
    aligned, found = align(a, b, layout, spec=spec)
    np.testing.assert_array_equal(aligned, a)                                   # exactly back
    for k, p in planted.items():
        np.testing.assert_array_equal(p[found[k]], np.arange(len(p)))           # found undoes planted


def test_the_lstm_spec_moves_every_gate_of_a_hidden_unit_together():
    m, layout, theta, x = setup("lstm")
    spec = spec_for(m, layout, theta, x)
    n = 7
    perm = np.roll(np.arange(n), 1)                       # unit i of the permuted network is unit i-1
    b = apply_permutation(theta.numpy(), layout, {"rnn.l0": perm}, spec)
    w = {k: torch.as_tensor(v) for k, v in layout.unflatten(torch.as_tensor(b)).items()}
    old = dict(m.named_parameters())
    for gate in range(4):
        rows = gate * n + perm
        torch.testing.assert_close(
            w["rnn.weight_ih_l0"][gate * n : (gate + 1) * n], old["rnn.weight_ih_l0"][rows]
        )
        torch.testing.assert_close(w["rnn.weight_hh_l0"][gate * n:(gate + 1) * n],
                                   old["rnn.weight_hh_l0"][rows][:, perm])
        torch.testing.assert_close(w["rnn.bias_hh_l0"][gate * n:(gate + 1) * n], old["rnn.bias_hh_l0"][rows])
    torch.testing.assert_close(
        w["rnn.weight_ih_l1"], old["rnn.weight_ih_l1"][:, perm]
    )  # the next layer's inputs
    torch.testing.assert_close(w["head.weight"], old["head.weight"])                    # l1 not permuted here


@pytest.mark.parametrize(
    "model,why",
    [
        (nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 2)), "no permutation spec for Embedding (0)"),
        (
            nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)),
            "no permutation spec for BatchNorm1d (1)",
        ),
        (nn.GRU(3, 4), "no permutation spec for GRU ()"),
        (nn.Sequential(nn.Linear(3, 4)), "fewer than two layers"),
        (Backwards(), "no permutation spec for Backwards: permuting its units changes its outputs"),
    ],
)
def test_models_the_spec_cannot_cover_say_so(model, why):
    layout = Layout.of(model)
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    x = torch.randint(0, 5, (4, 3)) if isinstance(model[0] if isinstance(model, nn.Sequential) else model,
                                                  nn.Embedding) else torch.randn(4, 8 if why.startswith(
                                                      "no permutation spec for Backwards") else 3)
    with pytest.raises(NoSpec, match=why.replace("(", r"\(").replace(")", r"\)")):
        spec_for(model.eval(), layout, theta, x)
