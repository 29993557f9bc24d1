"""Entry point `paper`: the whole suite as child runs of one parent run, then its analyses."""

import sys

from weightspace.cli import run_main
from weightspace.workflows import paper_suite


def main(argv: list[str]) -> None:
    """Parse the parameters into the suite's TrainConfigs, then train (or reuse) and analyse them."""
    paper_suite.main(argv)


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
