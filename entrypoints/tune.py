"""Entry point `tune`: an Optuna search for the optimiser settings (see MLproject and docs/tune.md)."""

import sys

from weightspace.cli import run_entry

if __name__ == "__main__":
    run_entry("tune", sys.argv[1:])
