"""Entry point `analysis`: from sibling runs to PCA and distance figures and a claims report."""

import sys

from weightspace.experiments.analyse import analysis_entry

if __name__ == "__main__":
    analysis_entry(sys.argv[1:])
