"""A model as a function of a flat parameter vector θ (float32, P), for the probes: the CNN
by default, or any module with the layout of its recorded parameters (those not in the layout,
and the buffers, are the module's own), its loss and, for a model that is not a classifier,
an optional error metric.

Everything here is functional (torch.func.functional_call), so one module instance
serves any number of θ and vmap can batch over θ. Eval mode: the probes measure the
deterministic network, not a dropout sample of it, except inside ``dropout_on``, where the
gradients of the objective SGD descends are taken.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch.func import functional_call, vmap
from torch.nn import functional as F

from weightspace.model import CNN, Layout
from weightspace.threads import adopt_threads

LossFn = Callable[[torch.Tensor], torch.Tensor]

# Samples per forward call, and θ per vmap call. On the CPU, vmap over conv weights
# becomes a grouped convolution that measured ~2x slower than a plain loop, hence 1.
# on a CPU, 256 keeps the activations in cache
AUTO_BATCH = {"cuda": 4096, "cpu": 256}
AUTO_THETA_CHUNK = {"cuda": 8, "cpu": 1}


class FlatModel:
    def __init__(self, width: float = 1.0, dropout: float = 0.5, device: str | torch.device = "cpu",
                 batch_size: int = 0, theta_chunk: int = 0, *, module: torch.nn.Module | None = None,
                 layout: Layout | None = None, loss: Callable | None = None, error: Callable | None = None):
        """``module``: any model instead of the CNN; ``layout``: which of its parameters θ holds (default
        all); ``loss``: ``loss(outputs, targets)``, a batch mean (default cross-entropy on logits);
        ``error``: ``error(outputs, targets)``, a batch mean (default: for integer class targets the
        share whose argmax differs, for other targets none, NaN)."""
        self.device = torch.device(device)
        self.module = (module if module is not None
                       else CNN(width=width, dropout=dropout)).to(self.device).eval()
        self.layout = layout or Layout.of(self.module)
        self.loss = loss
        self.error = error
        have = dict(self.module.named_parameters())
        missing = [n for n, s in zip(self.layout.names, self.layout.shapes)
                   if n not in have or tuple(have[n].shape) != s]
        if missing:
            raise ValueError(f"the model has no parameters {missing} of the layout's shapes")
        kind = "cuda" if self.device.type == "cuda" else "cpu"
        self.batch_size = batch_size or AUTO_BATCH[kind]
        self.theta_chunk = theta_chunk or AUTO_THETA_CHUNK[kind]

    @property
    def P(self) -> int:
        return self.layout.size

    def theta(self, vec) -> torch.Tensor:
        """A snapshot (numpy or tensor) as a float32 tensor on the model's device."""
        t = torch.as_tensor(np.asarray(vec) if not isinstance(vec, torch.Tensor) else vec)
        if t.shape != (self.P,):
            raise ValueError(f"parameter vector has shape {tuple(t.shape)}, model expects ({self.P},)")
        return t.to(self.device, torch.float32)

    def logits(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.module, self.layout.unflatten(theta), (x,))

    def loss_sum(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss summed over a batch."""
        if self.loss is None:
            return F.cross_entropy(out, y, reduction="sum")
        return self.loss(out, y) * y.shape[0]

    def wrong_sum(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The error summed over a batch: the error metric's, the argmax's for class targets, else NaN."""
        if self.error is not None:
            return self.error(out, y) * y.shape[0]
        if y.is_floating_point():   # not class labels: no error without a metric
            return torch.full((), float("nan"), device=out.device)
        return (out.argmax(1) != y).sum()

    def batches(self, n: int) -> Iterator[slice]:
        for s in range(0, n, self.batch_size):
            yield slice(s, min(n, s + self.batch_size))

    # -- evaluation (no grad) -------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """(mean loss, error) of one θ on (x, y)."""
        loss, err = self.evaluate_many(theta[None], x, y)
        return float(loss[0]), float(err[0])

    @torch.no_grad()
    def evaluate_many(self, thetas: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                      use_vmap: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(K,) mean losses and errors (``wrong_sum`` per sample) for K parameter vectors (K, P).

        θ are evaluated ``theta_chunk`` at a time with vmap, and the data in batches
        so that one call holds at most theta_chunk × batch_size activations.
        """
        adopt_threads()   # a suite's pool may have lent this process a freed core
        thetas = thetas.to(self.device, torch.float32)
        K, n = thetas.shape[0], len(y)
        chunk = self.theta_chunk if use_vmap is not False else 1
        if use_vmap is True:
            chunk = max(chunk, 2)
        bs = max(1, self.batch_size // chunk)
        loss = torch.zeros(K, dtype=torch.float64, device=self.device)
        wrong = torch.zeros(K, dtype=torch.float64, device=self.device)

        def sums(th, xb, yb):
            out = self.logits(th, xb)
            return self.loss_sum(out, yb), self.wrong_sum(out, yb)

        batched = vmap(sums, in_dims=(0, None, None))
        for k in range(0, K, chunk):
            th = thetas[k:k + chunk]
            for s in range(0, n, bs):
                xb, yb = x[s:s + bs].to(self.device), y[s:s + bs].to(self.device)
                if len(th) == 1:
                    l, w = sums(th[0], xb, yb)
                    l, w = l[None], w[None]
                else:
                    l, w = batched(th, xb, yb)
                loss[k:k + len(th)] += l.double()
                wrong[k:k + len(th)] += w.double()
        return (loss / n).cpu().numpy(), (wrong / n).cpu().numpy()

    @torch.no_grad()
    def predict(self, theta: torch.Tensor, x: torch.Tensor) -> np.ndarray:
        """Argmax class of every sample, (N,) int64."""
        return torch.cat([self.logits(theta, x[s].to(self.device)).argmax(1)
                          for s in self.batches(len(x))]).cpu().numpy()

    @contextmanager
    def dropout_on(self):
        """The module in train mode, the mode SGD trained it in (dropout on), except the layers with
        running statistics (BatchNorm, InstanceNorm): in train mode they would normalise by the
        statistics of each loss piece, a batch of the probe's own size that SGD never drew, so they keep
        the running ones. Every submodule's mode and every buffer are as before afterwards."""
        modes = [(m, m.training) for m in self.module.modules()]
        buffers = [(b, b.clone()) for b in self.module.buffers()]
        try:
            self.module.train()
            for m in self.module.modules():
                if isinstance(m, torch.nn.modules.batchnorm._NormBase):
                    m.eval()
            yield self
        finally:
            for m, was in modes:
                m.training = was
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)

    # -- differentiable objective, as pieces --------------------------------------
    def loss_pieces(self, x: torch.Tensor, y: torch.Tensor) -> list[LossFn]:
        """Closures whose sum is the mean cross-entropy over (x, y).

        One per data batch, so a gradient or Hessian-vector product is a sum of
        per-batch ones and memory stays bounded by the batch, not the data set.
        """
        n = len(y)
        # Backward holds ~3x the activations of a no-grad forward; keep the batch smaller.
        bs = max(1, self.batch_size // 4)

        def piece(xb, yb):
            return lambda th: self.loss_sum(self.logits(th, xb), yb) / n

        return [piece(x[s:s + bs].to(self.device), y[s:s + bs].to(self.device)) for s in range(0, n, bs)]


def weight_decay_piece(wd: float) -> LossFn:
    """PyTorch SGD's weight_decay=wd adds wd·θ to the gradient: objective term wd/2·‖θ‖²."""
    return lambda th: 0.5 * wd * th.dot(th)


def subset(x: torch.Tensor, y: torch.Tensor, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed seeded subset of n samples (all when n is 0 or too large), in original order."""
    if not n or n >= len(y):
        return x, y
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return x[idx], y[idx]
