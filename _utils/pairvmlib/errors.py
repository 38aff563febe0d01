"""The library's errors: one type for bad input, one for operations.

Modules convert both once, at the loader boundary (``pairvmlib.boundary``):
an execution function raises ``CommandExecutionError``, a state returns
``result: False``, a runner returns ``{"error", "retcode": 1}``.
"""


class PairvmError(Exception):
    """Anything the library refuses or fails to do; the message says what to do."""


class Invalid(PairvmError, ValueError):
    """A value breaks a rule: the message names the value, the field and the rule."""


class Failed(PairvmError):
    """An operation was refused or failed on a host: the message says why and what to do."""
