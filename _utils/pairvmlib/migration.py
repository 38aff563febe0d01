"""Live migration between the two hosts of a pair: the decisions, without I/O.

``pairvm.migrate`` (``_modules/pairvm_migrate.py``) gathers the facts of both
hosts and acts; this module says what those facts mean: the commands that
reach the peer (``ssh_argv``) and its libvirt (``peer_uri``), the preflight's
refusals (``preflight``), the disc's cache mode in a domain's XML
(``disc_cache``), the figures of libvirt's job statistics (``progress``,
``completed``), what a cleanup does given where the VM runs (``cleanup_action``)
and whether ``drbdsetup show`` still has a dual-primary window open
(``two_primaries``).

The sequence (as Ganeti's, with DRBD 8.4's runtime ``net-options`` instead
of a disconnect): allow two primaries on both hosts, promote the
destination, migrate, demote the source once its QEMU has gone, forbid two
primaries on both, confirm with ``drbdsetup show``. On a failure: abort the
job, the VM keeps running on the source, demote the destination, forbid two
primaries again.
"""

import ipaddress
import re
import xml.etree.ElementTree as ET

from pairvmlib import checks

# Words that may travel in an ssh command line: the remote side joins the
# argv with spaces and hands it to a shell, so nothing a shell would read.
SAFE_WORD = re.compile(r"[A-Za-z0-9_./=:,@+-]+")
SSH_OPTIONS = ("-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=5",
               "-o", "ServerAliveCountMax=3", "-T")
# QEMU's default downtime limit is 300 ms; Ganeti asks for 30 ms.
MAX_DOWNTIME_MS = 30
TIMEOUT = 600  # seconds a migration job may take before it is aborted


def address(ip, what="peer admin address"):
    """``ip`` if it is an IPv4/IPv6 address (never a name or an option), else ``Invalid``."""
    try:
        return str(ipaddress.ip_address(str(ip)))
    except ValueError:
        return checks.fail(what, ip, "must be an IP address (the state pairvm.config sets it in "
                                     "/machines/_global)")


def ssh_argv(ip, argv):
    """The argv that runs ``argv`` as root on the peer at ``ip`` over SSH (root's own key
    and known_hosts, as the host state pairvm.host.ssh sets them up)."""
    for word in argv:
        if not SAFE_WORD.fullmatch(str(word)):
            checks.fail("remote command", word, "holds characters a remote shell would interpret")
    return ["ssh", *SSH_OPTIONS, f"root@{address(ip)}", "--", *map(str, argv)]


def peer_uri(ip):
    """libvirt on the peer, through SSH on its admin address."""
    return f"qemu+ssh://root@{address(ip)}/system"


def migrate_uri(ip):
    """Where QEMU sends the memory: the peer's admin address, straight over TCP."""
    host = address(ip)
    return f"tcp://[{host}]" if ":" in host else f"tcp://{host}"


def limits(max_downtime, bandwidth, timeout, auto_converge=False):
    """The migration's limits, checked: downtime (ms), bandwidth (MiB/s, 0: none), timeout (s),
    and whether QEMU may slow the guest down so that the job converges."""
    return {"max_downtime": checks.integer("max_downtime", max_downtime, 1, 60000),
            "bandwidth": checks.integer("bandwidth", bandwidth, 0, 100000),
            "timeout": checks.integer("timeout", timeout, 1, 86400),
            "auto_converge": auto_converge if isinstance(auto_converge, bool) else
            checks.fail("auto_converge", auto_converge, "must be True or False")}


def flag_names(auto_converge):
    """The names of libvirt's ``VIR_MIGRATE_*`` flags of the job: live, peer-to-peer, the
    domain made persistent on the destination and undefined here. ``auto_converge``
    adds ``VIR_MIGRATE_AUTO_CONVERGE``: when the guest changes its memory faster than
    it is sent, QEMU throttles its vCPUs, step by step (20 %, then 10 % more each
    round), until the rest fits in ``max_downtime``; without it such a job runs into
    the timeout and is aborted."""
    names = ["VIR_MIGRATE_LIVE", "VIR_MIGRATE_PEER2PEER", "VIR_MIGRATE_PERSIST_DEST",
             "VIR_MIGRATE_UNDEFINE_SOURCE"]
    return names + (["VIR_MIGRATE_AUTO_CONVERGE"] if auto_converge else [])


def disc_cache(xml):
    """The cache mode of the domain's DRBD disc (its first ``<disk device='disk'>``)."""
    root = ET.fromstring(xml)
    for disk in root.iter("disk"):
        if disk.get("device", "disk") == "disk":
            driver = disk.find("driver")
            return driver.get("cache") if driver is not None else None
    return None


def preflight(name, me, record, facts, away=False):
    """The reasons not to migrate VM ``name`` from ``me`` to its peer, [] when it may go.

    ``facts``: ``running`` (here), ``drbd`` (this host's status of the resource),
    ``cache`` (the disc's cache mode), ``peer_record_same`` (``/machines/<name>``
    identical on the peer), ``peer_bridge`` (the VM's bridge exists there),
    ``peer_free_mib`` (free memory there), ``peer_running`` (already runs there),
    ``peer_libvirt`` (None, or why the peer's libvirt did not answer).
    """
    problems = []
    target = record["peer"] if record["home"] == me else record["home"]
    if not facts["running"]:
        problems.append(f"VM {name} is not running on {me}: run the migration on the host that runs it")
    if target != record["home"] and not away:
        problems.append(f"{target} is not VM {name}'s home ({record['home']}): pass away=True "
                        f"(pairvm swaplive {name} --away) to run it there")
    drbd = facts["drbd"] or {}
    if drbd.get("connection") != "Connected":
        problems.append(f"DRBD resource {name} is {drbd.get('connection') or 'down'}, not Connected")
    elif drbd.get("disk") != "UpToDate" or drbd.get("peer_disk") != "UpToDate":
        problems.append(f"VM {name}'s discs are {drbd.get('disk')}/{drbd.get('peer_disk')}, "
                        f"not UpToDate/UpToDate: wait for the sync to finish")
    if facts["cache"] != "none":
        problems.append(f"VM {name}'s disc has cache={facts['cache']}, not cache=none: restart it with "
                        f"pairvm to apply the current definition")
    if facts["peer_libvirt"]:
        problems.append(f"libvirt on {target} does not answer: {facts['peer_libvirt']}")
        return problems
    if not facts["peer_record_same"]:
        problems.append(f"/machines/{name} differs between {me} and {target}: apply the state pairvm "
                        f"on both hosts (salt-run pairvm.verify shows the difference)")
    if not facts["peer_bridge"]:
        problems.append(f"bridge {record['bridge']} does not exist on {target}")
    if facts["peer_running"]:
        problems.append(f"VM {name} is running on {target} too: stop one of them first")
    if facts["peer_free_mib"] < record["memory"]:
        problems.append(f"{target} has {facts['peer_free_mib']} MiB of memory free, VM {name} needs "
                        f"{record['memory']} MiB")
    return problems


def progress(stats):
    """(bytes sent, bytes in all, bytes remaining) of a running job's statistics
    (``virDomainGetJobStats``), None while libvirt reports no job."""
    if not stats or stats.get("type", 0) == 0:
        return None
    total = stats.get("data_total", stats.get("memory_total"))
    done = stats.get("data_processed", stats.get("memory_processed", 0))
    remaining = stats.get("data_remaining", stats.get("memory_remaining"))
    return done, total, remaining


def completed(stats):
    """The result figures of a finished job's statistics: ``time_ms``, ``downtime_ms``,
    ``bytes``, ``setup_ms`` (None where libvirt gave none)."""
    stats = stats or {}
    return {
        "time_ms": stats.get("time_elapsed"),
        "downtime_ms": stats.get("downtime"),
        "setup_ms": stats.get("setup_time"),
        "bytes": stats.get("data_processed", stats.get("memory_processed")),
    }


def cleanup_action(name, me, peer, runs_here, runs_there):
    """What a cleanup does, given where VM ``name`` really runs:
    ``("finish", host it runs on, host to demote)``, or ``Failed``-worthy text as
    ``("refuse", message)``/``("nothing", message)``."""
    if runs_here and runs_there:
        return ("refuse", f"VM {name} is running on BOTH {me} and {peer}: its disc is written from two "
                          f"sides. Stop the copy that is not in service (virsh destroy {name} on that "
                          f"host), then run the cleanup again")
    if runs_here:
        return ("finish", me, peer)
    if runs_there:
        return ("finish", peer, me)
    return ("nothing", f"VM {name} runs on neither {me} nor {peer}: nothing to finish; start it with "
                       f"pairvm start")
