"""Entry point `analysis`: from sibling runs to PCA and distance figures and a claims report."""

import sys

from weightspace.cli import run_entry

if __name__ == "__main__":
    run_entry("analysis", sys.argv[1:])
