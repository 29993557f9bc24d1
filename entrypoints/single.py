"""Entry point `single` (see MLproject and docs/parameters.md)."""

import sys

from weightspace.cli import run_entry

if __name__ == "__main__":
    run_entry("single", sys.argv[1:])
