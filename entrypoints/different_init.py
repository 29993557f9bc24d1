"""Entry point `different_init`: one of the replicas from different initial weights.

Its parameters: MLproject and docs/parameters.md.
"""

import sys

from weightspace.cli import run_main
from weightspace.workflows import training


def main(argv: list[str]) -> None:
    """Parse the parameters into one TrainConfig, then train it into this entry point's MLflow run."""
    training.main("different_init", argv)


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
