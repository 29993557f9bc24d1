"""Entry point `tune`: an Optuna search for the optimiser settings (see MLproject and docs/tune.md)."""

import sys

from weightspace.cli import run_main
from weightspace.workflows import tuning


def main(argv: list[str]) -> None:
    """Parse the parameters into the search's options and fixed TrainConfig, then run one worker."""
    tuning.main(argv)


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
