"""Training steps recorded once as a CUDA graph and replayed (``step_capture=1``).

A step of the paper's CNN is 50-60 small kernels, and a batched step of K siblings adds 4K+2
more; on a GPU, launching them takes longer than running them. A CUDA graph launches the
whole recorded step at once. A replay must be the very step an eager run would take:

* the step reads its batch through one static index buffer, filled before every call;
* everything the step touches (data, parameters, momentum buffers, the loss total) must
  stay the same tensors while the graph lives: its owner drops it when it replaces one
  (a resume loads new momentum buffers, a clone reseeds its dropout generator);
* the dropout generators are registered with the graph, so each replay draws from, and
  advances, their Philox offsets exactly as an eager step does (PyTorch's Note
  [CUDA Graph-safe RNG states]); the data order is drawn on the CPU, outside the graph;
* the first steps run eagerly on a side stream, as PyTorch's whole-network recipe asks:
  they create cuBLAS/cuDNN handles and the optimizer's momentum buffers, which a graph
  could only record, not create. They are real training steps, not extra ones;
* capture records without running, so the captured step is then run by its first replay;
* a batch of another size (an epoch's last, shorter one) runs eagerly.

Off on the CPU (``step_capture=1`` there is refused): there is no launch cost to save.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .params import ParamError

WARMUP = 3  # eager steps before the capture, PyTorch's recipe's number


def check(step_capture: int, device: torch.device) -> None:
    """Refuse ``step_capture=1`` where there are no CUDA graphs."""
    if step_capture and device.type != "cuda":
        raise ParamError(f"parameter 'step_capture': 1 records the training step as a CUDA graph and needs a "
                         f"CUDA device, but this run trains on {device.type}; use 0")


# Records a step as a CUDA graph without running it, and returns the graph's replay.
GraphRecorder = Callable[[Callable[[], None], Sequence[torch.Generator], torch.device], Callable[[], None]]


def cuda_graph(step: Callable[[], None], generators: Sequence[torch.Generator],
               device: torch.device) -> Callable[[], None]:
    """Record ``step`` as a CUDA graph (not running it); returns the graph's replay."""
    graph = torch.cuda.CUDAGraph()
    for g in generators:
        graph.register_generator_state(g)
    # thread_local: the uploader thread may allocate (pinned) memory while this thread records.
    with torch.cuda.device(device), torch.cuda.graph(graph, capture_error_mode="thread_local"):
        step()
    return graph.replay


def eager_stand_in(step: Callable[[], None], generators: Sequence[torch.Generator],
                   device: torch.device) -> Callable[[], None]:
    """A recorder whose "replay" runs ``step`` again: StepGraph's bookkeeping, testable on the CPU."""
    return step


class StepGraph:
    """One training step, eager for its first ``warmup`` calls, then captured once and replayed.

    ``step()`` reads its batch from ``index`` (a static buffer of the full batch's shape) and
    writes its results into tensors it owns; ``__call__(idx)`` copies ``idx`` into the buffer
    and runs the step, eagerly or by replay.
    """

    def __init__(self, step: Callable[[], None], index: torch.Tensor, generators: Sequence[torch.Generator],
                 device: torch.device, *, warmup: int = WARMUP, recorder: GraphRecorder = cuda_graph):
        self.step, self.index, self.generators, self.device = step, index, list(generators), device
        self.warmup, self.recorder = warmup, recorder
        self.replay: Callable[[], None] | None = None
        self.eager_steps = 0

    def __call__(self, idx: torch.Tensor) -> None:
        self.index.copy_(idx)
        if self.replay is None:
            if self.eager_steps < self.warmup:
                self.eager_steps += 1
                return self._eager()
            self.replay = self.recorder(self.step, self.generators, self.device)
        self.replay()

    def _eager(self) -> None:
        if self.device.type != "cuda":
            return self.step()
        side, main = torch.cuda.Stream(self.device), torch.cuda.current_stream(self.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            self.step()
        main.wait_stream(side)
