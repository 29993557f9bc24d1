"""Entry point `paper`: the whole suite as child runs of one parent run, then its analyses."""

import sys

from weightspace.experiments.paper import paper_entry

if __name__ == "__main__":
    paper_entry(sys.argv[1:])
