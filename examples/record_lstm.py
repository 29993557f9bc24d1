"""Record an LSTM on sequential MNIST (one image row per step) with the probes, then analyse it.

    python examples/record_lstm.py                                   # 3 seeds, 10 epochs, 10,000 images
    python examples/record_lstm.py --seeds 5 --hidden 128 --train_subset 0

The paper's future work, "LSTMs": an ``nn.LSTM`` reads the 28 rows of an image as 28 steps of 28
pixels and a linear head classifies its last hidden state. Analysed with
``-P probe=examples.record_lstm:probe``: the analysis measures its curvature by a double backward where
PyTorch's LSTM kernel has no forward-mode derivative (param ``hvp_mode``), and aligns sibling solutions
by permuting the hidden units across the four gates.
"""

from __future__ import annotations

import sys
from pathlib import Path

from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_mlp import data, run  # noqa: E402 - the MLP example's data and recording loop

PROBE = "examples.record_lstm:probe"


class RowLSTM(nn.Module):
    """(N, 1, 28, 28) images -> an LSTM over their 28 rows -> 10 logits from the last step."""

    def __init__(self, hidden: int = 64):
        super().__init__()
        self.rnn = nn.LSTM(28, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x):
        return self.head(self.rnn(x.flatten(1, 2))[0][:, -1])


def probe(layout: dict, params: dict):
    """For the analysis' probes: the LSTM of the run's width, its loss, and its data."""
    return RowLSTM(int(params["hidden"])), F.cross_entropy, data(int(params["train_subset"]))


def main(argv: list[str] | None = None) -> None:
    run(argv, __doc__, "lstm-seqmnist", 64, 0.1, RowLSTM, PROBE)


if __name__ == "__main__":
    main()
