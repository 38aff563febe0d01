"""pairvmlib: the pairvm formula's own library, imported as plain Python.

Salt puts the synced ``_utils`` directory on ``sys.path`` while it loads a
module (execution modules, states, runners, pillars), so the formula's
modules import this package at their top level (never inside a function:
Salt removes the directory from ``sys.path`` again after loading). Pure
logic (validation, sizes, allocation, rendering) lives in modules without
I/O; the host helpers (``host``, ``machines``, ``pipeline``) take Salt's
``__salt__``/``__opts__``/``__context__`` as arguments. ``docs/architecture.md``
says which module owns what.

Errors: the library raises ``errors.Invalid`` (a value breaks a rule) and
``errors.Failed`` (an operation was refused or failed); the modules convert
them once, at the loader boundary (``boundary``).
"""
