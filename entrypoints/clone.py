"""Entry point `clone` (see MLproject and README)."""

import sys

from weightspace.cli import train_entry

if __name__ == "__main__":
    train_entry("clone", sys.argv[1:])
