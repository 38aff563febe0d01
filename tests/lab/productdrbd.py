"""The formula's own ``_modules/drbd.py``, loaded as a plain module, so that tests read
``drbdsetup events2`` output with the product's parser (``drbd._parse_events``) instead of
one of their own."""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "pairvm_drbd_for_tests", Path(__file__).resolve().parents[2] / "_modules" / "drbd.py")
drbd = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(drbd)
