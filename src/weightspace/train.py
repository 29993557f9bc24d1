"""The training loop: whole dataset as device tensors, one index permutation per epoch.

Seeds:
* ``init_seed`` alone fixes the initial weights (built on the CPU, then moved);
* ``shuffle_seed`` alone fixes the data order and the dropout masks, through two
  dedicated generators, never the global RNG;
* the state of both generators is part of the checkpoint, so a resumed run replays
  exactly the batches and masks an uninterrupted run would have drawn.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from . import capture, numerics
from .config import ParamError, TrainConfig
from .data import Data
from .model import CNN, build_model, flat_params

# Offset so the dropout stream and the data-order stream of one shuffle_seed differ.
DROPOUT_STREAM = 0x5EED


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ParamError(f"parameter 'device': {name} requested but CUDA is not available; use auto or cpu")
    return torch.device(name)


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """The numeric regime of a training step (forward and loss; backward follows the forward's dtypes).

    bf16 runs the convolutions and matmuls in bfloat16 while the weights, the optimizer, the
    snapshots and every evaluation stay fp32: the trajectory is still an fp32 parameter vector,
    only its gradients are noisier. Otherwise (fp32, tf32) the context is a no-op.
    """
    # No cast cache: each weight is cast once per step anyway, and a CUDA graph cannot keep one.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16", cache_enabled=False)


@dataclass
class EvalResult:
    loss: float
    accuracy: float


class Trainer:
    """One model, its optimizer and its two RNG streams."""

    def __init__(self, cfg: TrainConfig, data: Data, device: torch.device):
        self.cfg, self.data, self.device = cfg, data, device
        self.numerics = numerics.resolve(device.type, cfg.precision)
        self.numerics.apply()
        self.model: CNN = build_model(cfg.width, cfg.dropout, cfg.init_seed)
        self.model.to(device, memory_format=torch.channels_last)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay)
        capture.check(cfg.step_capture, device)
        # step_capture=1: full batches replay one recorded CUDA graph (capture.py).
        self.recorder: capture.GraphRecorder | None = capture.cuda_graph if cfg.step_capture else None
        self.graph: capture.StepGraph | None = None
        self.total = torch.zeros((), device=device)  # the epoch's summed loss, a tensor the graph keeps
        self.reseed(cfg.shuffle_seed)
        self.epoch = 0
        self.batched = None  # the BatchedTrainer this trainer is trained in, if any

    def reseed(self, shuffle_seed: int) -> None:
        """Start fresh data-order and dropout streams (a clone does this after pretraining)."""
        # The permutation is drawn on the CPU so the data order is the same on every device.
        self.order_gen = torch.Generator().manual_seed(shuffle_seed)
        self.model.dropout_gen = torch.Generator(device=self.device).manual_seed(
            shuffle_seed + DROPOUT_STREAM)
        self.graph = None  # a recorded step draws from the generator it was recorded with

    # -- training ------------------------------------------------------------------------
    def train_epoch(self) -> torch.Tensor:
        """One pass over a fresh permutation; returns the mean minibatch loss (a 0-d tensor)."""
        bs, n = self.cfg.batch_size, len(self.data.y_train)
        perm = torch.randperm(n, generator=self.order_gen).to(self.device)
        self.model.train()
        self.total.zero_()
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            if self.recorder is not None and len(idx) == bs:
                self._step_graph()(idx)
            else:
                self._step(idx)
        self.epoch += 1
        return self.total / n

    def _step(self, idx: torch.Tensor) -> None:
        """One SGD step on the samples ``idx``; its loss, times the batch size, is added to ``total``."""
        x, y = self.data.x_train, self.data.y_train
        with autocast(self.cfg.precision, self.device):
            loss = F.cross_entropy(self.model(x[idx]), y[idx])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        # Accumulate on the device: a .item() per step would sync every batch.
        self.total += loss.detach() * len(idx)

    def _step_graph(self) -> capture.StepGraph:
        if self.graph is None:
            index = torch.empty(self.cfg.batch_size, dtype=torch.int64, device=self.device)
            self.graph = capture.StepGraph(lambda: self._step(index), index, [self.model.dropout_gen],
                                           self.device, recorder=self.recorder)
        return self.graph

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, batch: int = 0) -> EvalResult:
        """Loss and accuracy in eval mode (no dropout) over the whole set."""
        # On the CPU, large batches spill the conv activations out of cache, so smaller ones
        # evaluate faster; a GPU wants large batches (fewer launches).
        batch = batch or (2048 if self.device.type == "cuda" else 256)
        self.model.eval()
        loss = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        for i in range(0, len(y), batch):
            out = self.model(x[i:i + batch])
            loss += F.cross_entropy(out, y[i:i + batch], reduction="sum").double()
            correct += (out.argmax(1) == y[i:i + batch]).sum()
        n = max(1, len(y))
        return EvalResult(float(loss) / n, float(correct) / n)

    def epoch_metrics(self) -> dict[str, float]:
        if self.batched is not None:  # a sibling trained in a BatchedTrainer: evaluated with all of them
            return self.batched.metrics_for(self)
        tr = self.evaluate(self.data.x_train, self.data.y_train)
        te = self.evaluate(self.data.x_test, self.data.y_test)
        return {"train_loss": tr.loss, "train_accuracy": tr.accuracy,
                "test_loss": te.loss, "test_accuracy": te.accuracy}

    def theta(self) -> torch.Tensor:
        """The parameter vector as a fresh fp32 CPU tensor: one flat copy off the device."""
        if self.device.type == "cpu":
            return flat_params(self.model)
        flat = torch.cat([p.detach().reshape(-1) for p in self.model.parameters()]).float()
        if getattr(self, "_pinned", None) is None or self._pinned.numel() != flat.numel():
            self._pinned = torch.empty(flat.numel(), dtype=torch.float32, pin_memory=True)
        self._pinned.copy_(flat, non_blocking=True)
        synchronize(self.device)
        return self._pinned.clone()

    # -- checkpoint ------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Everything needed to continue bit-exactly, as named CPU tensors (safetensors-ready)."""
        out = {f"model.{k}": _copy(v) for k, v in self.model.state_dict().items()}
        for i, p in enumerate(self.model.parameters()):
            buf = self.opt.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                out[f"opt.momentum.{i}"] = _copy(buf)
        out["rng.order"] = self.order_gen.get_state()
        out["rng.dropout"] = self.model.dropout_gen.get_state().cpu()
        out["epoch"] = torch.tensor(self.epoch, dtype=torch.int64)
        return out

    def load_state_tensors(self, st: dict[str, torch.Tensor], *, rng: bool = True) -> None:
        sd = {k[len("model."):]: v for k, v in st.items() if k.startswith("model.")}
        self.model.load_state_dict(sd)
        # The optimizer keeps its momentum buffers in channels_last like the parameters.
        for i, p in enumerate(self.model.parameters()):
            key = f"opt.momentum.{i}"
            if key in st:
                buf = torch.empty_like(p)
                buf.copy_(st[key].to(self.device))
                self.opt.state[p]["momentum_buffer"] = buf
        self.epoch = int(st["epoch"])
        self.graph = None  # it was recorded with the momentum buffers just replaced
        if rng:
            self.order_gen.set_state(st["rng.order"])
            # A fresh generator, registered with no graph yet: what the device check ran (set_state on
            # the old one would be allowed too; its old graph is gone with self.graph).
            self.model.dropout_gen = torch.Generator(device=self.device)
            self.model.dropout_gen.set_state(st["rng.dropout"])


def _copy(t: torch.Tensor) -> torch.Tensor:
    """A private contiguous CPU copy: it is written to disk later, while training goes on."""
    return t.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)


def weight_stats(theta: torch.Tensor, theta0: torch.Tensor, prev: torch.Tensor | None) -> dict[str, float]:
    """‖θ‖, ‖θ−θ0‖ and, after epoch 0, the step since the previous epoch; in float64."""
    t = theta.double()
    out = {"weight_norm": float(t.norm()), "distance_from_init": float((t - theta0.double()).norm())}
    if prev is not None:
        out["step_length"] = float((t - prev.double()).norm())
    return out


def is_finite(metrics: dict[str, float]) -> bool:
    return all(math.isfinite(v) for v in metrics.values())


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock read after it measures the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EpochSink(Protocol):
    """What ``fit`` hands each trained epoch to: a run session (tracking/session.py)."""

    def end_epoch(self, seconds: float) -> dict[str, float] | None: ...


def fit(step: Callable[[], object], sinks: Sequence[EpochSink], first: int, epochs: int,
        device: torch.device, *, desc: str, progress: bool = True,
        after: Callable[[int, dict[str, float]], bool] | None = None) -> None:
    """The one training loop: epochs first+1 .. epochs of ``step``, each handed to every sink.

    ``step`` trains one epoch: ``Trainer.train_epoch`` for one model, or
    ``BatchedTrainer.train_epoch`` for siblings in lockstep (one sink per sibling, each
    charged an equal share of the epoch's time). ``after(epoch, metrics)`` sees the first
    sink's metrics and returns True to stop early (a tuning trial that reached its target).
    """
    bar = tqdm(range(first + 1, epochs + 1), desc=desc, unit="epoch", disable=not progress, file=sys.stderr,
               dynamic_ncols=True, initial=first, total=epochs)
    for epoch in bar:
        t0 = time.perf_counter()
        step()
        synchronize(device)
        seconds = (time.perf_counter() - t0) / len(sinks)
        shown = [sink.end_epoch(seconds) for sink in sinks][0]
        if shown is not None:
            bar.set_postfix(loss=f"{shown['train_loss']:.2e}", acc=f"{shown['test_accuracy']:.4f}")
            if after is not None and after(epoch, shown):
                break
    bar.close()
