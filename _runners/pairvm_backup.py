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


def _groups(hub, names, pair):
    """{pair: (its two hosts, its VMs of ``names``, or None for all of them)}: the pair
    ``pair``, else each VM's pair (from the registries), else every registered pair."""
    if pair is not None:
        found, hosts = hub.pair(pair=pair)
        return {found: (hosts, names)}
    if names is None:
        every = {found: (info["hosts"], None) for found, info in hub.pairs().items() if info["hosts"]}
        if not every:
            raise Failed("no pair has a registry recording its hosts yet: run salt-run pairvm.allocate first")
        return every
    groups = {}
    for vm in names:
        found, hosts = hub.pair(vm=vm)
        groups.setdefault(found, (hosts, []))[1].append(vm)
    return groups


@boundary.converting(lambda exc: master.refused(__context__, exc))
def backup(name, destination, speed=None, compress=None, test=False, timeout=300, pair=None):
    """
    Back VMs up from the master, each on the host of its pair that must do it.

    ``name`` is one VM, ``all`` (every VM of every pair, or of ``pair``) or a
    comma-separated list (each VM's pair is found from the registries, or
    named with ``pair=``); ``destination``
    is ``user@host:/path`` (``_NAME`` becomes each VM's name; required for
    several VMs). The master asks both hosts where each VM runs
    (``pairvm.list``) and gives it to the host NOT running it, whose disc is
    the DRBD replica; a VM running nowhere goes to its home host. Both hosts
    then run ``pairvm.backup`` on their share at the same time (each host's
    VMs one after another), each reading at no more than ``speed`` KiB/s
    (default pillar ``pairvm:backup:speed``; 0 = no limit), with
    ``compress`` (``gzip`` or ``zstd``). Each host checks the backup host
    before taking a snapshot, so an unreachable host or directory fails at
    once; a host that does not answer a ping stops everything before any
    backup starts.

    Returns one summary: ``vms`` maps each VM to its host and result (the
    backup's size, sha256, rate; or why it failed), ``hosts`` each host's
    share. The exit code is 1 if any VM was not backed up. ``timeout``: how
    long Salt waits for a host that stops answering.

    CLI Example:

    .. code-block:: bash

        salt-run pairvm.backup vm1 backup@store:/backup/_NAME.gz
        salt-run pairvm.backup all backup@store:/backup/_NAME.zst 20480 compress=zstd
        salt-run pairvm.backup vm1,vm2 backup@store:/backup/_NAME.gz test=True
        salt-run pairvm.backup all backup@store:/backup/_NAME.gz pair=two
    """
    names = None if name == "all" else [schema.validate_name(vm) for vm in str(name).split(",")]
    bk.parse_destination(destination)
    bk.check_one_each(destination, names or "all")
    given = {key: value for key, value in (("speed", speed), ("compress", compress)) if value is not None}
    bk.settings(given)
    hub = master.Master(__opts__)
    groups = _groups(hub, names, pair)
    hosts = sorted(host for pair_hosts, _ in groups.values() for host in pair_hosts)
    hub.require(hosts)
    views = hub.call_each({host: ("pairvm.list", (), {"fields": "name,running,location"}) for host in hosts},
                          timeout=60)
    silent = [host for host, answer in views.items() if not answer or answer.get("retcode")]
    if silent:
        raise Failed(f"{', '.join(silent)} did not answer pairvm.list, so where each VM runs is not known: "
                     f"nothing was backed up ({views})")
    views = {host: answer["ret"] for host, answer in views.items()}
    shares, problems = {}, {}
    for pair_hosts, vms in groups.values():
        known = {row["name"] for host in pair_hosts for row in views[host]["vms"]}
        unknown = sorted(set(vms or ()) - known)
        if unknown:
            raise Failed(f"no such VM on the pair {' and '.join(pair_hosts)}: {', '.join(unknown)}; "
                         f"nothing was backed up")
        pair_shares, pair_problems = bk.shares(pair_hosts, {host: views[host] for host in pair_hosts}, vms)
        shares.update(pair_shares)
        problems.update(pair_problems)
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
