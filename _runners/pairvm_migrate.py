"""pairvm runner: moving running VMs between the two hosts of the pair.

``migrate`` finds the host that runs the VM and has it run
``pairvm.migrate`` (the live migration itself is host-local: it reaches the
peer over SSH); ``evacuate`` empties a host for maintenance, one VM at a
time; ``return`` brings every VM back to its home afterwards. ``swap``
makes the peer a stopped VM's home (``pairvm.swap`` on both hosts at once,
the new home in the registry).
"""

import logging
import time

from pairvmlib import boundary, master, registry, rehome, schema
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
SWAP_TIMEOUT = 6 * 3600  # a host's copy of a big disc (pairvm.swap reports its progress)
SYNC_WAIT = 60  # seconds for DRBD to connect on the new LVs


def _hosts_of(mst, host):
    """The two hosts of ``host``'s pair (its pillar's), once both answer a ping."""
    hosts = master.pair_hosts(schema.settings(mst.pillar(host)))
    mst.require(hosts)
    return hosts


def _rows(mst, host):
    """{name: row of pairvm.list} on ``host``."""
    return {row["name"]: row for row in mst.call(host, "pairvm.list")["vms"]}


@_operation
def migrate(name, away=False, cleanup=False, max_downtime=None, bandwidth=None, auto_converge=None,
            test=False, pair=None):
    """
    Live-migrate the running VM ``name`` to the other host of its pair.

    Runs ``pairvm.migrate`` on the host that runs it (``away=True`` to move
    it away from its home; ``max_downtime``, ``bandwidth``, ``auto_converge``
    and ``test`` are passed on). ``cleanup=True`` after a migration whose
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
    kwargs = {k: v for k, v in (("max_downtime", max_downtime), ("bandwidth", bandwidth),
                                ("auto_converge", auto_converge)) if v is not None}
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


# --- rehoming ---------------------------------------------------------------------------------


def _each_host(mst, hosts, name, to, **kwargs):
    """``pairvm.swap`` on both hosts at once; ``Failed`` naming each host that refused."""
    answers = mst.call_each({h: ("pairvm.swap", (name,), dict(kwargs, home=to)) for h in hosts},
                            timeout=SWAP_TIMEOUT)
    failed = [f"{h}: {'no answer' if a is None else a.get('ret')}" for h, a in sorted(answers.items())
              if a is None or a.get("retcode", 0) != 0 or not isinstance(a.get("ret"), dict)]
    if failed:
        raise Failed("; ".join(failed))
    return {h: a["ret"] for h, a in answers.items()}


def _wait_in_sync(mst, host, name):
    """DRBD of ``name`` on ``host`` once Connected with both discs UpToDate, and whether a
    resync was seen on the way; ``Failed`` after ``SYNC_WAIT`` seconds."""
    deadline, resynced = time.monotonic() + SYNC_WAIT, False
    while True:
        state = mst.call(host, "drbd.status", name)
        resynced = resynced or bool(state.get("syncing"))
        if state.get("connected") and state.get("up_to_date"):
            return resynced
        if time.monotonic() > deadline:
            raise Failed(f"VM {name}'s DRBD resource on {host} is {state.get('connection')} with discs "
                         f"{state.get('disk')}/{state.get('peer_disk')} {SYNC_WAIT} s after both came up on "
                         f"the new LVs: the old LVs are kept; run salt-run pairvm.swap {name} again")
        time.sleep(1)


@_operation
def swap(name, pair=None, test=False):
    """
    Make the peer the home of the stopped VM ``name`` (the old tool's ``swap``).

    Its disc moves from the ``there`` to the ``here`` volume group on the new
    home, and from ``here`` to ``there`` on the old one: each host copies its
    own replica into the new LV locally, both hosts at once, with DRBD's
    internal meta data, so that the resource connects on the new LVs without
    a resync (``pairvm.swap`` on each host says how). The old LVs are removed
    only once it is Connected and UpToDate on both. The pair's registry
    then keeps the new home: in the definition of a VM created with
    ``salt-run pairvm.create``; for a VM of the pillar files beside its
    allocation (served as pillar ``pairvm:homes``, over the pillar's
    ``home``); set the new ``home`` in the pillar files too: until then
    ``salt-run pairvm.verify`` warns (``EHOMEMOVED``).

    Refused, with nothing changed, while the VM runs (stop it, or move it
    live with ``salt-run pairvm.migrate``), unless DRBD is Connected and
    UpToDate on both hosts, or while a host does not answer. The registry
    records the swap as begun before the first host changes anything:
    interrupted at any point, running it again finishes it (and until then
    the old LVs hold the data; ``verify`` says ``ESWAPUNFINISHED``).
    ``test=True`` lists each host's steps. The pair is found from the
    registries, or named with ``pair=``.

    CLI Example:

    .. code-block:: bash

        salt-run pairvm.swap vm1
        salt-run pairvm.swap vm1 test=True
    """
    schema.validate_name(name)
    mst = master.Master(__opts__)
    pair, hosts = mst.pair(pair=pair, vm=None if pair else name)
    mst.require(hosts)
    entry = registry.read(__opts__, pair).get("vms", {}).get(name)
    if entry is None:
        raise Failed(f"VM {name} is not in pair {pair}'s registry (salt-run pairvm.allocate registers "
                     f"the VMs pillar defines)")
    pending = entry.get("swap")
    to = rehome.target(hosts, mst.call(hosts[0], "pairvm.pillar_record", name)["home"], pending)
    planned = _each_host(mst, hosts, name, to, resume=bool(pending), test=True)
    if not pending and len({answer["record_sha256"] for answer in planned.values()}) != 1:
        raise Failed(f"/machines/{name} differs between {' and '.join(hosts)}: re-apply the VM states "
                     f"(salt-run pairvm.verify says more); nothing was changed")
    if test:
        return {"name": name, "home": to, "changes": planned,
                "comment": f"would make {to} the home of VM {name}"}
    if not pending:
        with registry.locked(__opts__, pair) as box:
            box["registry"] = registry.with_swap(box["registry"], name, to)
    copied = _each_host(mst, hosts, name, to, resume=True)
    resynced = _wait_in_sync(mst, to, name)
    pillar_home = schema.vms(mst.pillar(hosts[0])).get(name, {}).get("home")
    with registry.locked(__opts__, pair) as box:
        box["registry"] = registry.with_home(box["registry"], name, to, pillar_home)
    for host in hosts:
        mst.call(host, "saltutil.refresh_pillar", wait=True)
    finished = _each_host(mst, hosts, name, to, finish=True)
    with registry.locked(__opts__, pair) as box:
        box["registry"] = registry.with_swap(box["registry"], name, None)
    changes = {h: copied[h]["changes"] + finished[h]["changes"] for h in hosts}
    how = "after a resync" if resynced else "without a resync"
    return {"name": name, "home": to, "changes": changes, "resynced": resynced,
            "comment": f"VM {name}'s home is {to}: its discs moved on both hosts and connected {how}"}
