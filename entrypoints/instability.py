"""Entry point `instability`: copies of one network spawned at each epoch k and trained on apart, then
the error barrier between them against k (Frankle et al. 2020, Figure 1)."""

import sys

from weightspace.cli import run_main
from weightspace.workflows import instability_sweep


def main(argv: list[str]) -> None:
    """Parse the parameters into each spawn epoch's TrainConfigs, then train (or reuse) and analyse them."""
    instability_sweep.main(argv)


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
