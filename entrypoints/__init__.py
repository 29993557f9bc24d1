"""Thin MLflow entry points: parse, validate, call the library.

Under conda (no ``pip install``), the library is imported straight from ``src/``.
"""

import sys
from pathlib import Path

_SRC = str(Path(__file__).resolve().parent.parent / "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)
