"""pairvm (watch): what the reactor does on a host when the beacon reports a DRBD change.

Part of the ``pairvm`` execution module: this file shares its virtual name
and its gate (docs/architecture.md). The reactor
(``salt/pairvm/reactor/``, README "Monitoring") calls ``reconnect`` on the
host whose ``pairvm_drbd`` beacon reported a resource StandAlone after a
plain disconnect. A split brain is never touched: it is reported and left
to the operator (``pairvm.split_brain_victim``).

:depends: drbd-utils
"""

import time

from pairvmlib import boundary, defaults
from pairvmlib import host as hostlib
from pairvmlib.errors import Failed, Invalid
from salt.exceptions import CommandExecutionError

__virtualname__ = boundary.VIRTUAL_NAME
__virtual__ = boundary.virtual  # the one gate of every pairvm file (docs/architecture.md)


def _host():
    return hostlib.Host.of(globals())


def _count(value, what, low, high):
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise Invalid(f"{what} must be a whole number from {low} to {high}, got {value!r}")
    return value


def _event(name, what, data):
    try:
        __salt__["event.send"](f"pairvm/drbd/{name}/{what}", data)
    except Exception:  # noqa: BLE001 - the job's own result says it too
        pass


@boundary.execution
def reconnect(name, attempts=None, backoff=None, test=False):
    """
    Reconnect DRBD resource ``name`` after a plain disconnect (StandAlone, no
    split brain): ``drbdadm connect``, with backoff, giving up after a limit.

    Up to ``attempts`` tries (default 5), waiting ``backoff`` seconds after
    the first (default 2), twice as long after each next one, for the
    resource to leave StandAlone. Connected, or Connecting (DRBD itself
    connects once the peer listens), ends it. A split brain is refused: it
    is never resolved here (event ``pairvm/drbd/<name>/split_brain``; see
    ``pairvm.split_brain_victim``). Giving up sends event
    ``pairvm/drbd/<name>/reconnect_failed`` and fails the job. The reactor
    calls this on the beacon's ``connection_lost``.

    CLI Example:

    .. code-block:: bash

        salt hostB pairvm.reconnect vm1
        salt hostB pairvm.reconnect vm1 attempts=3 backoff=5
        salt hostB pairvm.reconnect vm1 test=True
    """
    attempts = _count(defaults.RECONNECT["attempts"] if attempts is None else attempts, "attempts", 1, 20)
    backoff = _count(defaults.RECONNECT["backoff"] if backoff is None else backoff, "backoff", 0, 300)
    host = _host()
    host.machine(name)  # a VM defined here, by a valid name
    plan = host.plan(name, test)
    with host.lock(name):
        tried = []
        for attempt in range(attempts):
            host.forget_runtime()
            state = host.drbd(name)
            if not state:
                raise Failed(f"DRBD resource {name} is not up on {host.me}: run pairvm.autostart")
            if state.get("split_brain"):
                _event(name, "split_brain", {"resource": name, "host": host.me})
                raise Failed(f"DRBD resource {name} is in split brain on {host.me}: not reconnected; "
                             f"the operator chooses the victim (pairvm split_brain_victim)")
            if state.get("connection") != "StandAlone":
                comment = f"{name} is {state.get('connection')} on {host.me}"
                return dict(plan.result(comment), attempts=attempt)
            try:
                plan.step(f"drbdadm connect {name}", __salt__["drbd.connect"], name)
            except CommandExecutionError as exc:
                tried.append(str(exc))
            if test:
                return dict(plan.result(f"{name} is StandAlone on {host.me}"), attempts=0)
            time.sleep(backoff * 2**attempt)
        _event(name, "reconnect_failed", {"resource": name, "host": host.me, "attempts": attempts,
                                          "errors": tried})
        raise Failed(f"DRBD resource {name} still StandAlone on {host.me} after {attempts} connect attempts"
                     + (f"; last error: {tried[-1]}" if tried else ""))
