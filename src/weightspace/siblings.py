"""Train K sibling models together: one vmapped forward/backward for all of them per step.

Siblings share architecture, batch size and dataset, and differ in their initial weights
and/or their shuffle seeds. ``BatchedTrainer.train_epoch()`` leaves every ``Trainer`` in
the state its own ``Trainer.train_epoch()`` would have left it in:

* each model's permutation is drawn from its own ``order_gen``, and each step's dropout
  masks from its own ``model.dropout_gen`` through ``model.dropout_masks`` (m1 then m2,
  once per step), outside vmap, so both generators advance exactly as in train.py;
* the update is a torch.optim.SGD with the siblings' shared lr, momentum and weight decay,
  stepping the stacked (K, ...) tensors once for all siblings: SGD's update is elementwise,
  so on a stack it is each sibling's own update;
* parameters and momentum buffers are copied back into each model and its optimizer at
  the end of the epoch, and ``trainer.epoch`` is incremented.

The parameters agree with sequential training within float tolerance, not bitwise: the
vmapped convolution is a grouped convolution, which sums in a different order.
"""

from __future__ import annotations

import torch
from torch.func import functional_call, stack_module_state, vmap
from torch.nn import functional as F

from . import capture
from .train import Trainer, autocast


class BatchedTrainer:
    """K sibling ``Trainer``s trained in lockstep, one vmapped step for all of them."""

    def __init__(self, trainers: list[Trainer]):
        if not trainers:
            raise ValueError("BatchedTrainer needs at least one trainer")
        t0 = trainers[0]
        self.trainers = list(trainers)
        self.device = t0.device
        self.batch_size = t0.cfg.batch_size
        self.precision = t0.cfg.precision
        self.recorder = t0.recorder  # step_capture=1: each epoch's full batches replay one CUDA graph
        self.hyper = _sgd_hyper(t0.opt)
        arch = _arch(t0.model)
        for t in trainers[1:]:
            if (t.device, t.cfg.batch_size, t.cfg.precision, t.recorder) != (self.device, self.batch_size,
                                                                               self.precision, self.recorder):
                raise ValueError("siblings must share device, batch_size, precision and step_capture")
            if _arch(t.model) != arch or len(t.data.y_train) != len(t0.data.y_train):
                raise ValueError("siblings must share architecture, dropout and dataset")
            if _sgd_hyper(t.opt) != self.hyper:
                raise ValueError("siblings must share lr, momentum and weight_decay")
        # Same data object in the common case; identical contents are the caller's promise.
        self.x, self.y = t0.data.x_train, t0.data.y_train
        # A template on the meta device: functional_call only needs the module's code.
        self.base = _meta_copy(t0.model)
        self._step = vmap(self._loss, in_dims=(0, 0, 0, 0, 0))
        self._forward = vmap(lambda p, x: functional_call(self.base, p, (x,)), in_dims=(0, None))
        self._metrics: tuple[int, list[dict[str, float]]] | None = None
        if self.device.type == "cuda":
            # One vmapped evaluation of all K serves every sibling's epoch_metrics(): it saves K-1
            # launches per batch on a GPU; on a CPU the grouped convolution was slower per model.
            for t in self.trainers:
                t.batched = self

    def _loss(self, params, x, y, m1, m2):
        if self.precision == "bf16":
            # vmap's batching rule turns conv2d into a convolution that autocast does not cast, so
            # the convolutions' inputs are cast by hand, as autocast casts them in Trainer.train_epoch.
            params = {k: v.to(torch.bfloat16) for k, v in params.items()}
            x = x.to(torch.bfloat16)
        out = functional_call(self.base, params, (x,), {"masks": (m1, m2)})
        return F.cross_entropy(out.float(), y)  # autocast computes the loss in fp32 too

    def train_epoch(self) -> list[torch.Tensor]:
        """One epoch for every sibling; returns each one's mean minibatch loss (0-d tensors)."""
        ts, bs, dev = self.trainers, self.batch_size, self.device
        lr, momentum, wd = self.hyper
        n = len(self.y)
        perms = torch.stack([torch.randperm(n, generator=t.order_gen) for t in ts]).to(dev)
        names = [name for name, _ in ts[0].model.named_parameters()]
        params, _ = stack_module_state([t.model for t in ts])
        params = {k: params[k].detach().requires_grad_() for k in names}
        plist = [params[k] for k in names]
        opt = torch.optim.SGD(plist, lr=lr, momentum=momentum, weight_decay=wd, foreach=True)
        if momentum != 0:
            for p, buf in zip(plist, self._stack_momentum(names)):
                opt.state[p]["momentum_buffer"] = buf
        self.base.train()
        for t in ts:
            t.model.train()
        total = torch.zeros(len(ts), device=dev)

        def step(idx: torch.Tensor) -> None:             # idx: (K, B)
            b = idx.shape[1]
            masks = [t.model.dropout_masks(b, dev) for t in ts]
            m1 = torch.stack([m[0] for m in masks])
            m2 = torch.stack([m[1] for m in masks])
            with autocast(self.precision, dev):
                losses = self._step(params, self.x[idx], self.y[idx], m1, m2)  # (K,)
            # Siblings are independent, so the gradient of the sum is each one's own gradient.
            for p, g in zip(plist, torch.autograd.grad(losses.sum(), plist)):
                p.grad = g
            opt.step()
            total.add_(losses.detach() * b)

        graph = None
        if self.recorder is not None:
            # Recorded anew each epoch: the stacked parameters and the optimizer are this epoch's.
            index = torch.empty((len(ts), bs), dtype=torch.int64, device=dev)
            graph = capture.StepGraph(lambda: step(index), index, [t.model.dropout_gen for t in ts], dev,
                                      recorder=self.recorder)
        for i in range(0, n, bs):
            idx = perms[:, i:i + bs]
            if graph is not None and idx.shape[1] == bs:
                graph(idx)
            else:
                step(idx)
        bufs = [opt.state[p]["momentum_buffer"] for p in plist] if momentum != 0 else None
        self._write_back(names, plist, bufs)
        return list(total / n)

    # -- evaluation ---------------------------------------------------------------------------
    def metrics_for(self, trainer: Trainer) -> dict[str, float]:
        """``trainer.epoch_metrics()``: all K siblings are evaluated together, once per epoch."""
        epoch = self.trainers[0].epoch
        if self._metrics is None or self._metrics[0] != epoch:
            self._metrics = (epoch, self.evaluate_all())
        return self._metrics[1][self.trainers.index(trainer)]

    @torch.no_grad()
    def evaluate_all(self) -> list[dict[str, float]]:
        """Eval-mode loss and accuracy of every sibling on the train and test sets, one vmap per batch."""
        params, _ = stack_module_state([t.model for t in self.trainers])
        params = {k: v.detach() for k, v in params.items()}
        self.base.eval()
        data = self.trainers[0].data
        out: list[dict[str, float]] = [{} for _ in self.trainers]
        for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
            loss, correct = self._evaluate(params, x, y)
            for k, m in enumerate(out):
                m[f"{split}_loss"], m[f"{split}_accuracy"] = loss[k], correct[k]
        return [
            {k: m[k] for k in ("train_loss", "train_accuracy", "test_loss", "test_accuracy")} for m in out
        ]

    def _evaluate(self, params: dict, x: torch.Tensor, y: torch.Tensor) -> tuple[list[float], list[float]]:
        K, dev = len(self.trainers), self.device
        batch = 2048 if dev.type == "cuda" else 256   # as Trainer.evaluate
        loss = torch.zeros(K, dtype=torch.float64, device=dev)
        correct = torch.zeros(K, dtype=torch.int64, device=dev)
        for i in range(0, len(y), batch):
            logits = self._forward(params, x[i:i + batch])                       # (K, B, classes)
            yb = y[i:i + batch]
            loss += (
                F.cross_entropy(logits.flatten(0, 1), yb.repeat(K), reduction="none")
                .view(K, -1)
                .sum(1)
                .double()
            )
            correct += (logits.argmax(2) == yb).sum(1)
        n = max(1, len(y))
        return (loss / n).tolist(), (correct.double() / n).tolist()

    # -- state in and out ---------------------------------------------------------------------
    def _stack_momentum(self, names: list[str]) -> list[torch.Tensor]:
        """The optimizers' momentum buffers as (K, ...) tensors; zeros before the first step.

        A zero buffer gives exactly SGD's first step (0 * momentum + g == g), so a mix of
        fresh and resumed siblings trains correctly in one stacked optimizer.
        """
        out = []
        for j in range(len(names)):
            per = []
            for t in self.trainers:
                p = list(t.model.parameters())[j]
                buf = t.opt.state.get(p, {}).get("momentum_buffer")
                per.append(torch.zeros_like(p) if buf is None else buf.detach())
            out.append(torch.stack(per))
        return out

    @torch.no_grad()
    def _write_back(
        self, names: list[str], plist: list[torch.Tensor], bufs: list[torch.Tensor] | None
    ) -> None:
        for k, t in enumerate(self.trainers):
            for j, p in enumerate(t.model.parameters()):
                p.copy_(plist[j][k])
                if bufs is not None:
                    buf = torch.empty_like(p)  # keeps the parameter's (channels_last) layout
                    buf.copy_(bufs[j][k])
                    t.opt.state[p]["momentum_buffer"] = buf
            t.epoch += 1


def _sgd_hyper(opt: torch.optim.Optimizer) -> tuple[float, float, float]:
    if not isinstance(opt, torch.optim.SGD) or len(opt.param_groups) != 1:
        raise ValueError("BatchedTrainer supports a single-group torch.optim.SGD")
    g = opt.param_groups[0]
    if g["dampening"] != 0 or g["nesterov"] or g.get("maximize", False):
        raise ValueError("BatchedTrainer supports SGD without dampening, nesterov or maximize")
    return float(g["lr"]), float(g["momentum"]), float(g["weight_decay"])


def _arch(model: torch.nn.Module) -> tuple:
    return tuple((n, tuple(p.shape)) for n, p in model.named_parameters()) + (model.p,)


def _meta_copy(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    gen, model.dropout_gen = model.dropout_gen, None  # generators do not deepcopy to meta
    try:
        base = copy.deepcopy(model)
    finally:
        model.dropout_gen = gen
    return base.to("meta")
