"""Benchmarks that print their figures: ``python -m bench [--quick]``.

The formula's library (``_utils/pairvmlib``) is imported as plain Python, as
Salt's loader makes it importable for the formula's modules.
"""

import sys
from pathlib import Path

_UTILS = str(Path(__file__).resolve().parents[1] / "_utils")
if _UTILS not in sys.path:
    sys.path.insert(0, _UTILS)
