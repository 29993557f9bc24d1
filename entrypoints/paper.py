"""Entry point `paper`: the whole suite as child runs of one parent run, then its analyses."""

import sys

from weightspace.cli import run_entry

if __name__ == "__main__":
    run_entry("paper", sys.argv[1:])
