"""The paper's three-layer CNN, and flat-vector views of its parameters.

What counts as a layer: the three hidden layers that carry the representation,
two convolutions and one fully connected layer, as the paper counts them; the linear
read-out that produces the 10 logits is not counted (it is the softmax classifier).

    conv 5x5, 1 -> 32, same padding, ReLU, max-pool 2      (28 -> 14)
    conv 5x5, 32 -> 64, same padding, ReLU, max-pool 2     (14 -> 7)
    (computed as pool then ReLU: the same numbers, cheaper)
    dropout, fully connected 3136 -> 244, ReLU
    dropout, linear 244 -> 10

At width=1.0 this has 819,974 parameters, 0.05% above the paper's 819,557 (the paper
does not give its layer sizes; 244 hidden units is the width that lands closest).
``width`` scales the channels and the hidden units together.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

BASE_C1, BASE_C2, BASE_HIDDEN = 32, 64, 244
PAPER_N_PARAMS = 819_557


def widths(width: float) -> tuple[int, int, int]:
    return tuple(max(1, round(b * width)) for b in (BASE_C1, BASE_C2, BASE_HIDDEN))  # type: ignore[return-value]


def pool2(x: torch.Tensor) -> torch.Tensor:
    """2x2 max-pooling, stride 2.

    Without autograd on the CPU: two elementwise maxima of strided views, the same numbers as
    F.max_pool2d and 7 to 9 times faster there (torch's CPU pooling kernel is slow for these
    shapes; it was 40% of an evaluation's forward pass). With autograd, F.max_pool2d itself:
    it sends a tied window's gradient to one element, where maximum would split it, and MNIST's
    constant background ties many windows.
    """
    if (
        x.device.type == "cpu"
        and not torch.is_grad_enabled()
        and x.shape[-1] % 2 == 0
        and x.shape[-2] % 2 == 0
    ):
        w = torch.maximum(x[..., 0::2], x[..., 1::2])
        return torch.maximum(w[..., 0::2, :], w[..., 1::2, :])
    return F.max_pool2d(x, 2)


class CNN(nn.Module):
    def __init__(self, width: float = 1.0, dropout: float = 0.5, n_classes: int = 10):
        super().__init__()
        c1, c2, h = widths(width)
        self.conv1 = nn.Conv2d(1, c1, 5, padding=2)
        self.conv2 = nn.Conv2d(c1, c2, 5, padding=2)
        self.fc1 = nn.Linear(c2 * 7 * 7, h)
        self.fc2 = nn.Linear(h, n_classes)
        self.p = dropout

        # Dropout draws from this generator, not the global RNG, so the masks depend on
        # shuffle_seed alone and can be replayed (resume) or drawn outside vmap (siblings).
        self.dropout_gen: torch.Generator | None = None

    def dropout_masks(self, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The two dropout masks of one training step, already scaled by 1/(1-p)."""
        if not self.training or self.p == 0:
            return None
        keep = 1.0 - self.p
        # One draw for both masks (one kernel and one generator call per step); on the CPU it
        # yields exactly the numbers of two successive draws, so trajectories are unchanged.
        n1, n2 = batch * self.fc1.in_features, batch * self.fc1.out_features
        flat = torch.empty(n1 + n2, device=device).bernoulli_(keep, generator=self.dropout_gen).div_(keep)
        return flat[:n1].view(batch, -1), flat[n1:].view(batch, -1)

    def forward(
        self, x: torch.Tensor, masks: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        if masks is None and self.training:
            masks = self.dropout_masks(x.shape[0], x.device)
        # Pool, then ReLU: the same numbers as ReLU then pool (ReLU is monotone, so it commutes
        # with max, and the same element wins each window), with the ReLU on a quarter of them.
        x = F.relu(pool2(self.conv1(x)))
        x = F.relu(pool2(self.conv2(x)))
        x = x.flatten(1)
        if masks is not None:
            x = x * masks[0]
        x = F.relu(self.fc1(x))
        if masks is not None:
            x = x * masks[1]
        return self.fc2(x)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_model(width: float, dropout: float, init_seed: int) -> CNN:
    """Build on the CPU from ``init_seed`` alone, so epoch 0 is the same on every device."""
    g = torch.random.fork_rng(devices=[])
    with g:
        torch.manual_seed(init_seed)
        model = CNN(width=width, dropout=dropout)
    return model


@dataclass(frozen=True)
class Layout:
    """How a flat parameter vector maps back to named tensors."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    dtype: str = "float32"

    @property
    def size(self) -> int:
        return self.offsets[-1] + int(np.prod(self.shapes[-1])) if self.names else 0

    @classmethod
    def of(cls, model: nn.Module) -> "Layout":
        names, shapes, offsets, off = [], [], [], 0
        for name, p in model.named_parameters():
            names.append(name)
            shapes.append(tuple(p.shape))
            offsets.append(off)
            off += p.numel()
        return cls(tuple(names), tuple(shapes), tuple(offsets))

    def to_json(self) -> str:
        return json.dumps({
            "dtype": self.dtype, "size": self.size,
            "params": [{"name": n, "shape": list(s), "offset": o, "numel": int(np.prod(s))}
                       for n, s, o in zip(self.names, self.shapes, self.offsets)],
        }, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Layout":
        d = json.loads(text)
        ps = d["params"]
        return cls(tuple(p["name"] for p in ps), tuple(tuple(p["shape"]) for p in ps),
                   tuple(p["offset"] for p in ps), d.get("dtype", "float32"))

    def unflatten(self, vec: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            n: vec[o : o + int(np.prod(s))].view(s) for n, s, o in zip(self.names, self.shapes, self.offsets)
        }


def flat_params(model: nn.Module | Iterable[torch.Tensor]) -> torch.Tensor:
    """The parameter vector in layout order, float32, on the CPU, as a fresh copy.

    One flat copy off the device (``torch.cat`` always allocates, so on the CPU the result
    never aliases the parameters). ``model`` may also be the parameters to keep, in order.
    """
    params = model.parameters() if isinstance(model, nn.Module) else model
    return torch.cat([p.detach().reshape(-1) for p in params]).to("cpu", torch.float32)


def load_flat(model: nn.Module, vec: torch.Tensor | np.ndarray) -> None:
    vec = torch.as_tensor(np.asarray(vec) if not isinstance(vec, torch.Tensor) else vec)
    off = 0
    with torch.no_grad():
        for p in model.parameters():
            n = p.numel()
            p.copy_(vec[off:off + n].view_as(p).to(p.device, p.dtype))
            off += n
    if off != vec.numel():
        raise ValueError(f"vector has {vec.numel()} entries, model has {off} parameters")
