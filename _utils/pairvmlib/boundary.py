"""Where the library meets Salt's loader: errors converted once, one gate.

Every execution module of the formula that shares the virtual name
``pairvm`` uses ``virtual()`` as its gate (identical gates: Salt's loader
records a failed ``__virtual__`` under the shared name and would hide the
other files' functions; see docs/architecture.md) and wraps each public
function with ``execution``, which turns the library's ``PairvmError`` into
Salt's ``CommandExecutionError``. The host-setup helpers (``pairvm_host``),
whose input is pillar, use ``invocation``: ``Invalid`` becomes
``SaltInvocationError`` there.
"""

import functools

from pairvmlib.errors import Invalid, PairvmError
from pairvmlib.host import HAS_LIBVIRT
from salt.exceptions import CommandExecutionError, SaltInvocationError

VIRTUAL_NAME = "pairvm"


def virtual():
    """The ``__virtual__`` answer of every ``pairvm`` execution module."""
    if not HAS_LIBVIRT:
        return (False, "pairvm: the libvirt Python binding (libvirt-python) is not installed in Salt's "
                       "Python; apply the state pairvm.host.packages, which installs it")
    return VIRTUAL_NAME


def converting(convert, also=()):
    """A decorator: the library's errors (and ``also``) that the function raises go
    through ``convert(exc)``, which raises Salt's error or returns the result to give."""

    def decorate(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            try:
                return func(*args, **kwargs)
            except (PairvmError, *also) as exc:
                return convert(exc)

        return wrapper

    return decorate


def _as_command_error(exc):
    raise CommandExecutionError(str(exc)) from exc


def _as_invocation_error(exc):
    if isinstance(exc, Invalid):
        raise SaltInvocationError(str(exc)) from exc
    raise CommandExecutionError(str(exc)) from exc


def runner_operation(context):
    """A decorator for a runner function: a library error becomes ``{"error", "retcode": 1}``
    (salt-run exits with a returned dict's retcode) and ``retcode`` 1 in the runner's
    ``__context__``, which ``context()`` returns."""

    def refused(exc):
        context()["retcode"] = 1
        return {"error": str(exc), "retcode": 1}

    return converting(refused)


# An execution function whose library errors reach Salt as CommandExecutionError.
execution = converting(_as_command_error)
# Like execution, but a value that breaks a rule reaches Salt as SaltInvocationError.
invocation = converting(_as_invocation_error)
