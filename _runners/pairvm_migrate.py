"""pairvm runner: moving running VMs between the two hosts of the pair.

``migrate`` finds the host that runs the VM and has it run
``pairvm.migrate`` (the live migration itself is host-local: it reaches the
peer over SSH); ``evacuate`` empties a host for maintenance, one VM at a
time; ``return`` brings every VM back to its home afterwards.
"""

import logging

from pairvmlib import boundary, master, schema
from pairvmlib.errors import Failed

__virtualname__ = "pairvm"
__func_alias__ = {"return_": "return"}


def __virtual__():
    return __virtualname__


_operation = boundary.converting(lambda exc: master.refused(__context__, exc))
log = logging.getLogger(__name__)
# A migration reports its own failures; the call waits for its job (pairvm.migrate's
# own timeout is 600 s) and a little more.
CALL_TIMEOUT = 660


def _hosts_of(mst, host):
    """The two hosts of ``host``'s pair (its pillar's), once both answer a ping."""
    hosts = master.pair_hosts(schema.settings(mst.pillar(host)))
    mst.require(hosts)
    return hosts


def _rows(mst, host):
    """{name: row of pairvm.list} on ``host``."""
    return {row["name"]: row for row in mst.call(host, "pairvm.list")["vms"]}


@_operation
def migrate(name, away=False, cleanup=False, max_downtime=None, bandwidth=None, test=False, pair=None):
    """
    Live-migrate the running VM ``name`` to the other host of its pair.

    Runs ``pairvm.migrate`` on the host that runs it (``away=True`` to move
    it away from its home; ``max_downtime`` and ``bandwidth`` and ``test``
    are passed on). ``cleanup=True`` after a migration whose
    process died: it runs where the VM runs (or on its home when it runs
    nowhere), which ends the DRBD window or says why it cannot. The VM's
    pair is found from the registries, or named with ``pair=``; its hosts
    must answer a ping.

    CLI Example:

    .. code-block:: bash

        salt-run pairvm.migrate vm1
        salt-run pairvm.migrate vm1 away=True
        salt-run pairvm.migrate vm1 cleanup=True
    """
    schema.validate_name(name)
    mst = master.Master(__opts__)
    _, hosts = mst.pair(pair=pair, vm=None if pair else name)
    mst.require(hosts)
    running = [host for host in hosts if _rows(mst, host).get(name, {}).get("running")]
    if len(running) != 1 and not cleanup:
        raise Failed(f"VM {name} is running on {' and '.join(running) if running else 'neither host'}: "
                     f"a live migration moves a VM that runs on exactly one host")
    source = running[0] if len(running) == 1 else hosts[0]
    kwargs = {k: v for k, v in (("max_downtime", max_downtime), ("bandwidth", bandwidth)) if v is not None}
    result = mst.call(source, "pairvm.migrate", name, away=away, cleanup=cleanup, test=test,
                      timeout=CALL_TIMEOUT, **kwargs)
    return {source: result}


def _move_each(mst, host, names):
    """Migrate each VM in turn from ``host``; one that cannot move does not stop the others."""
    moved, failed = {}, {}
    for name in names:
        try:
            moved[name] = mst.call(host, "pairvm.migrate", name, away=True, timeout=CALL_TIMEOUT)
        except Failed as exc:
            failed[name] = str(exc)
            log.warning("pairvm: %s stays on %s: %s", name, host, exc)
    if failed:
        __context__["retcode"] = 1
    # salt-run, and an orchestrate's salt.runner step, fail on a returned dict's retcode.
    return {"moved": moved, "not_moved": failed, "retcode": 1 if failed else 0}


@_operation
def evacuate(host):
    """
    Live-migrate every VM running on ``host`` to its peer, one at a time.

    For host maintenance. Each VM's result is reported; a VM that cannot
    move is listed under ``not_moved`` with the reason and keeps running
    (the retcode is then non-zero). ``salt-run pairvm.return HOST``
    brings them back; the orchestrate ``pairvm.orch.maintenance`` does the
    whole round.

    CLI Example:

    .. code-block:: bash

        salt-run pairvm.evacuate hostA
    """
    mst = master.Master(__opts__)
    _hosts_of(mst, host)
    names = sorted(name for name, row in _rows(mst, host).items() if row["running"])
    return _move_each(mst, host, names)


@_operation
def return_(host):
    """
    Live-migrate every VM whose home is ``host`` and that runs on its peer back home.

    After ``salt-run pairvm.evacuate HOST`` and the maintenance. Reported
    like ``evacuate``.

    CLI Example:

    .. code-block:: bash

        salt-run pairvm.return hostA
    """
    mst = master.Master(__opts__)
    peer = next(h for h in _hosts_of(mst, host) if h != host)
    names = sorted(name for name, row in _rows(mst, peer).items()
                   if row["running"] and row["location"] == "away")
    return _move_each(mst, peer, names)
