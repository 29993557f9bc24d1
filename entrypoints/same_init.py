"""Entry point `same_init`: one of the replicas from one init, each with its own data order.

Its parameters: MLproject and docs/parameters.md.
"""

import sys

from weightspace.cli import run_main
from weightspace.workflows import training


def main(argv: list[str]) -> None:
    """Parse the parameters into one TrainConfig, then train it into this entry point's MLflow run."""
    training.main("same_init", argv)


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
