"""Entry point `tune`: an Optuna search for the optimiser settings (see MLproject and docs/tune.md)."""

import sys

from weightspace.experiments.tune import tune_entry

if __name__ == "__main__":
    tune_entry(sys.argv[1:])
