"""Entry point `analysis`: from sibling runs to PCA and distance figures and a claims report."""

import sys

from weightspace.cli import run_main
from weightspace.workflows import analysis_runs


def main(argv: list[str]) -> None:
    """Parse the parameters into AnalysisOptions, then analyse the runs they select."""
    analysis_runs.main(argv)


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
