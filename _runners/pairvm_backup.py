"""pairvm runner (backups): back VMs up from the master, each by the right host.

Part of the ``pairvm`` runner (runner files merge by virtual name,
docs/architecture.md). The master asks both hosts of the pair where each VM
runs, gives each VM to the host NOT running it (a VM running nowhere: its
home host), and runs the two hosts' shares of ``pairvm.backup`` at once.
"""

from pairvmlib import backup as bk
from pairvmlib import boundary, master, schema
from pairvmlib.errors import Failed

__virtualname__ = "pairvm"


def __virtual__():
    return __virtualname__


def _refused(exc):
    """A refusal as a clear message and a non-zero retcode (salt-run exits with it)."""
    __context__["retcode"] = 1
    return {"error": str(exc), "retcode": 1}


def _pair(hub, names):
    """The pair of the VMs ``names`` (the pillar of their home host), or of any pair host."""
    pairvm = hub.pillar()
    homes = sorted({(pairvm.get("vms") or {}).get(vm, {}).get("home") for vm in names or ()} - {None})
    if homes:
        pairvm = hub.pillar(homes[0])
    return master.pair_hosts(schema.settings(pairvm))


@boundary.converting(_refused)
def backup(name, destination, speed=None, compress=None, test=False, timeout=300):
    """
    Back VMs up from the master, each on the host of the pair that must do it.

    ``name`` is one VM, ``all`` or a comma-separated list; ``destination``
    is ``user@host:/path`` (``_NAME`` becomes each VM's name; required for
    several VMs). The master asks both hosts where each VM runs
    (``pairvm.list``) and gives it to the host NOT running it, whose disc is
    the DRBD replica; a VM running nowhere goes to its home host. Both hosts
    then run ``pairvm.backup`` on their share at the same time (each host's
    VMs one after another), each reading at no more than ``speed`` KiB/s
    (default pillar ``pairvm:backup:speed``; 0 = no limit), with
    ``compress`` (``gzip`` or ``zstd``). Each host checks the backup host
    before taking a snapshot, so an unreachable host or directory fails at
    once.

    Returns one summary: ``vms`` maps each VM to its host and result (the
    backup's size, sha256, rate; or why it failed), ``hosts`` each host's
    share. The exit code is 1 if any VM was not backed up. ``timeout``: how
    long Salt waits for a host that stops answering.

    CLI Example:

    .. code-block:: bash

        salt-run pairvm.backup vm1 backup@store:/backup/_NAME.gz
        salt-run pairvm.backup all backup@store:/backup/_NAME.zst 20480 compress=zstd
        salt-run pairvm.backup vm1,vm2 backup@store:/backup/_NAME.gz test=True
    """
    names = None if name == "all" else [schema.validate_name(vm) for vm in str(name).split(",")]
    bk.parse_destination(destination)
    bk.check_one_each(destination, names or "all")
    given = {key: value for key, value in (("speed", speed), ("compress", compress)) if value is not None}
    bk.settings(given)
    hub = master.Master(__opts__)
    pair = _pair(hub, names)
    views = hub.call_each({host: ("pairvm.list", (), {"fields": "name,running,location"}) for host in pair},
                          timeout=60)
    silent = [host for host, answer in views.items() if not answer or answer.get("retcode")]
    if silent:
        raise Failed(f"{', '.join(silent)} did not answer pairvm.list, so where each VM runs is not known: "
                     f"nothing was backed up ({views})")
    views = {host: answer["ret"] for host, answer in views.items()}
    unknown = sorted(set(names or ()) - {row["name"] for view in views.values() for row in view["vms"]})
    if unknown:
        raise Failed(f"no such VM on the pair {' and '.join(pair)}: {', '.join(unknown)}; "
                     f"nothing was backed up")
    shares, problems = bk.shares(pair, views, names)
    calls = {host: ("pairvm.backup", (), {"name": ",".join(share), "destination": destination,
                                          "test": test, **given})
             for host, share in shares.items() if share}
    report = {vm: {"host": None, "result": False, "comment": why} for vm, why in problems.items()}
    for host, answer in hub.call_each(calls, timeout=timeout).items():
        report.update(_outcome(host, shares[host], answer))
    return _summary(report, {host: share for host, share in shares.items() if share}, test)


def _outcome(host, share, answer):
    """{vm: {"host", "result", ...}} of one host's ``pairvm.backup`` answer (one VM or several)."""
    if answer is None:
        return {vm: {"host": host, "result": False, "comment": f"{host} did not answer"} for vm in share}
    ret = answer["ret"]
    if isinstance(ret, dict) and "vms" in ret:
        return {vm: dict(result, host=host, result=result["result"] is True)
                for vm, result in ret["vms"].items()}
    if answer.get("retcode") or not isinstance(ret, dict):
        return {share[0]: {"host": host, "result": False, "comment": str(ret)}}
    return {share[0]: dict({k: v for k, v in ret.items() if k != "name"}, host=host, result=True)}


def _summary(report, shares, test):
    failed = sorted(vm for vm, r in report.items() if not r["result"])
    done = sorted(vm for vm, r in report.items() if r["result"])
    comment = f"{'would back up' if test else 'backed up'}: " + (
        ", ".join(f"{vm} ({report[vm]['host']})" for vm in done) or "none")
    if failed:
        comment += "; FAILED: " + "; ".join(f"{vm} ({report[vm]['host'] or 'no host'}): "
                                            f"{report[vm].get('comment')}" for vm in failed)
    result = {"result": not failed, "comment": comment, "vms": report, "hosts": shares}
    if failed:
        __context__["retcode"] = 1
        result["retcode"] = 1
    return result
