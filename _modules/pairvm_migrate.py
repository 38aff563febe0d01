"""pairvm: move a running VM to the other host of its pair (live migration).

``pairvm.migrate`` runs on the host that runs the VM. It reaches the peer
through SSH on the peer's admin address, with root's key pair and
known_hosts as the host state ``pairvm.host.ssh`` set them up: libvirt's own
peer-to-peer migration (``qemu+ssh://root@PEER/system``, the memory straight
over TCP to the peer's admin address) and the few DRBD commands the window
needs. The decisions (preflight, job figures, cleanup) are
``pairvmlib.migration``'s.

:depends: libvirt-python, drbd-utils, openssh-client
"""

import contextlib
import hashlib
import logging
import subprocess
import threading
import time

from pairvmlib import boundary, drbdconf, layout, machines, migration, progress
from pairvmlib import host as hostlib
from pairvmlib.errors import Failed

log = logging.getLogger(__name__)

__virtualname__ = boundary.VIRTUAL_NAME
__virtual__ = boundary.virtual  # the one gate of every pairvm file (docs/architecture.md)

POLL = 0.5  # seconds between two looks at a running migration job
DEMOTE_WAIT = 10  # seconds the source's QEMU may take to let go of the disc


def _host():
    return hostlib.Host.of(globals())


@boundary.execution
def migrate(name, away=False, cleanup=False, max_downtime=migration.MAX_DOWNTIME_MS, bandwidth=0,
            timeout=migration.TIMEOUT, auto_converge=False, test=False):
    """
    Live-migrate the running VM ``name`` from this host to the other host of its pair.

    Refuses, changing nothing, unless the VM runs here, its DRBD resource is
    Connected and UpToDate on both sides, ``/machines/<name>`` is the same on
    both hosts, the peer's libvirt answers and has the VM's bridge and its
    memory free, and the disc is ``cache=none``. Moving a VM away from its
    home needs ``away=True`` (moving it home does not).

    With the VM's lock held on both hosts, it allows two DRBD Primaries on
    both (at runtime only: ``drbdadm net-options``, never in the resource
    file), promotes the peer, has libvirt migrate the VM peer-to-peer (live;
    downtime limit ``max_downtime`` ms, ``bandwidth`` MiB/s, 0: no limit;
    with ``auto_converge=True`` QEMU slows a guest that changes its memory
    faster than it can be sent, so the job still converges; off by default:
    with it on, the lab's fault test of a replication link cut during a slow
    migration did not end within 120 s),
    demotes this host once its QEMU has gone, forbids two Primaries again and
    confirms it with ``drbdsetup show`` on both. It reports progress
    (``pairvm/migrate/<name>/progress`` events and lines under salt-call)
    and returns the total time and downtime of libvirt's statistics.

    If anything fails (the peer's libvirt dies, the replication link drops,
    the job takes longer than ``timeout`` seconds) the job is aborted, the VM
    keeps running here, the peer has no running domain and is demoted, and
    two Primaries are forbidden again.

    ``cleanup=True``, after a migration whose process died midway: asks both
    hosts where the VM runs. On both: refuses. On one: demotes the other and
    forbids two Primaries on both. On neither: says so.

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm.migrate vm1
        salt hostA pairvm.migrate vm1 away=True
        salt hostA pairvm.migrate vm1 test=True
        salt hostA pairvm.migrate vm1 cleanup=True
    """
    host = _host()
    record = host.machine(name)
    limits = migration.limits(max_downtime, bandwidth, timeout, auto_converge)
    peer = host.other_host(record)
    ip = migration.address(host.setting("there_ip"))
    with host.lock(name), _peer_lock(host, ip, name):
        plan = host.plan(name, test)
        if cleanup:
            return _cleanup(host, plan, record, peer, ip)
        with host.libvirt() as conn, _peer_libvirt(ip) as (pconn, perror):
            facts = _facts(host, conn, pconn, perror, record, ip)
            problems = migration.preflight(name, host.me, record, facts, away)
            if problems:
                raise Failed(f"VM {name} cannot move from {host.me} to {peer}: " + "; ".join(problems))
            figures = _window(host, plan, conn, pconn, record, peer, ip, limits)
        result = plan.result(f"VM {name} runs on {peer}")
        if figures:
            result["migration"] = figures
            result["comment"] += (f": {figures['time_ms']} ms in all, {figures['downtime_ms']} ms of "
                                  f"downtime")
        return result


# --- the peer: SSH and libvirt over SSH --------------------------------------------------------


def _on_peer(host, ip, argv, what):
    return host.run(migration.ssh_argv(ip, argv), f"{what} on the peer ({ip})")


def _ask_peer(host, ip, argv):
    """Run a question on the peer; its whole answer (``retcode``, ``stdout``), a failure included."""
    return host.salt["cmd.run_all"](migration.ssh_argv(ip, argv), python_shell=False, ignore_retcode=True,
                                    output_loglevel="quiet")


@contextlib.contextmanager
def _peer_lock(host, ip, name):
    """Hold VM ``name``'s lock (``host.lock``'s file) on the peer as long as this block runs:
    ``flock`` there runs ``cat`` while it holds it; ``cat`` echoes our first line (so we know)
    and ends, releasing the lock, when our end of the SSH session closes, even if we die."""
    _on_peer(host, ip, ["mkdir", "-p", layout.LOCK_DIR], "creating the lock directory")
    argv = migration.ssh_argv(ip, ["flock", "-n", "-E", "75", f"{layout.LOCK_DIR}/{name}.lock", "cat"])
    holder = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,  # noqa: S603
                              stderr=subprocess.PIPE)
    try:
        try:
            holder.stdin.write(b"pairvm\n")
            holder.stdin.flush()
            echo = holder.stdout.readline()
        except OSError:
            echo = b""
        if echo != b"pairvm\n":
            rc, said = holder.wait(), holder.stderr.read().decode(errors="replace").strip()
            if rc == 75:
                raise Failed(f"another pairvm operation on {name} is running on the peer ({ip}); "
                             f"try again")
            raise Failed(f"cannot take the lock of {name} on the peer ({ip}): rc {rc} {said}")
        yield
    finally:
        if holder.poll() is None:
            holder.stdin.close()
            try:
                holder.wait(timeout=10)
            except subprocess.TimeoutExpired:
                holder.kill()
                holder.wait()


@contextlib.contextmanager
def _peer_libvirt(ip):
    """(connection to the peer's libvirt, None) or (None, why it did not answer)."""
    libvirt = hostlib.libvirt
    try:
        conn = libvirt.open(migration.peer_uri(ip))
    except libvirt.libvirtError as exc:
        yield None, str(exc)
        return
    try:
        yield conn, None
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()


def _runs_on(conn, name):
    dom = hostlib.Host.domain(conn, name)
    return dom is not None and bool(dom.isActive())


def _facts(host, conn, pconn, perror, record, ip):
    name = record["name"]
    dom = host.domain(conn, name)
    running = dom is not None and bool(dom.isActive())
    facts = {"running": running, "drbd": host.drbd(name),
             "cache": migration.disc_cache(dom.XMLDesc(0)) if running else None,
             "peer_libvirt": perror, "peer_record_same": False, "peer_bridge": False,
             "peer_free_mib": 0, "peer_running": False}
    if perror:
        return facts
    theirs = _ask_peer(host, ip, ["sha256sum", layout.machine_path(name)])
    mine = hashlib.sha256(machines.record_bytes(name) or b"").hexdigest()
    facts["peer_record_same"] = theirs["retcode"] == 0 and theirs["stdout"].split()[:1] == [mine]
    facts["peer_bridge"] = _ask_peer(host, ip, ["test", "-d", f"/sys/class/net/{record['bridge']}/bridge"]
                                     )["retcode"] == 0
    facts["peer_free_mib"] = pconn.getFreeMemory() // 2**20
    facts["peer_running"] = _runs_on(pconn, name)
    return facts


# --- the window ------------------------------------------------------------------------------


def _window(host, plan, conn, pconn, record, peer, ip, limits):
    """Dual-primary, promote the peer, migrate, demote here, single-primary: or, on a
    failure, abort and revert. Returns the completed job's figures (None with test=True)."""
    name = record["name"]
    uri, muri = migration.peer_uri(ip), migration.migrate_uri(ip)
    try:
        plan.step(f"drbdadm net-options --allow-two-primaries=yes {name}",
                  host.salt["drbd.net_options"], name, True)
        plan.step(f"ssh root@{ip} drbdadm net-options --allow-two-primaries=yes {name}",
                  _on_peer, host, ip, ["drbdadm", "net-options", "--allow-two-primaries=yes", name],
                  "allowing two primaries")
        plan.step(f"ssh root@{ip} drbdadm primary {name}",
                  _on_peer, host, ip, ["drbdadm", "primary", name], "promoting DRBD")
        stats = plan.step(f"virsh migrate --live --p2p --persistent --undefine-source {name} {uri} "
                          f"--migrateuri {muri}{' --auto-converge' if limits['auto_converge'] else ''} "
                          f"(max downtime {limits['max_downtime']} ms)",
                          _migrate, host, conn, pconn, record, uri, muri, limits)
    except Exception as exc:
        if plan.test:
            raise
        log.error("pairvm: migration of %s to %s failed: %s", name, peer, exc)
        left = _settle(host, plan, conn, pconn, record, peer, ip)
        undone = "was undone" if left is None else (
            f"could NOT be undone ({left}): run pairvm.migrate {name} cleanup=True once both hosts answer")
        raise Failed(f"migration of VM {name} to {peer} failed and {undone}: {exc}. "
                     f"{_where(host, conn, pconn, name, peer)}") from exc
    _finish(host, plan, record, ip, here_runs=False)
    return None if plan.test else migration.completed(stats)


def _where(host, conn, pconn, name, peer):
    here = _safe(lambda: _runs_on(conn, name))
    there = _safe(lambda: _runs_on(pconn, name))
    return f"VM {name} runs on {host.me}: {here}, on {peer}: {there}"


def _safe(query):
    try:
        return query()
    except Exception as exc:  # noqa: BLE001 - a report, not a decision
        return f"unknown ({exc})"


def _migrate(host, conn, pconn, record, uri, muri, limits):
    """libvirt's peer-to-peer live migration, watched: progress each second, the downtime
    limit once the job runs, an abort when the time is up or DRBD is no longer Connected.
    Returns the completed job's statistics."""
    libvirt = hostlib.libvirt
    name = record["name"]
    dom = conn.lookupByName(name)
    flags = 0
    for flag in migration.flag_names(limits["auto_converge"]):
        flags |= getattr(libvirt, flag)
    params = {libvirt.VIR_MIGRATE_PARAM_URI: muri}
    if limits["bandwidth"]:
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = limits["bandwidth"]
    outcome = {}

    def run():
        try:
            dom.migrateToURI3(uri, params, flags)
        except libvirt.libvirtError as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=run, name=f"pairvm-migrate-{name}", daemon=True)
    worker.start()
    meter = progress.Meter(record["memory"] * 2**20, time.monotonic())
    deadline = time.monotonic() + limits["timeout"]
    downtime_set, why = False, None
    while worker.is_alive():
        worker.join(POLL)
        if not worker.is_alive():
            break
        figures = migration.progress(_safe_stats(dom))
        if figures and not downtime_set:
            downtime_set = _set_downtime(dom, limits["max_downtime"])
        if figures:
            _report(host, meter, name, figures)
        host.forget_runtime()
        connection = host.drbd(name).get("connection")
        if why is None and connection != "Connected":
            why = f"DRBD resource {name} became {connection or 'down'} during the migration"
        if why is None and time.monotonic() > deadline:
            why = f"the migration took longer than {limits['timeout']:g} s"
        if why is not None:
            _abort(dom, name)
    worker.join()
    if why is not None or "error" in outcome:
        raise Failed(why or f"libvirt: {outcome['error']}")
    _report(host, meter, name, (meter.total, meter.total, 0), final=True)
    return _completed_stats(pconn, name)


def _safe_stats(dom):
    try:
        return dom.jobStats()
    except hostlib.libvirt.libvirtError:
        return None


def _set_downtime(dom, ms):
    try:
        dom.migrateSetMaxDowntime(ms)
        return True
    except hostlib.libvirt.libvirtError as exc:  # no job yet: try at the next look
        log.debug("pairvm: migrateSetMaxDowntime: %s", exc)
        return False


def _abort(dom, name):
    try:
        dom.abortJob()
    except hostlib.libvirt.libvirtError as exc:
        log.warning("pairvm: aborting the migration of %s: %s", name, exc)


def _report(host, meter, name, figures, final=False):
    done, total, remaining = figures
    if total:
        meter.total = total
    shown = meter.update(done, time.monotonic(), final=final)
    if shown is not None:
        host.progress("migrate", name, dict(shown, remaining=remaining))


def _completed_stats(pconn, name):
    """The finished job's statistics, from the peer, which has the domain now."""
    try:
        return pconn.lookupByName(name).jobStats(hostlib.libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    except hostlib.libvirt.libvirtError as exc:
        log.warning("pairvm: no statistics of the migration of %s: %s", name, exc)
        return {}


# --- ending the window: forward, or back --------------------------------------------------------


def _finish(host, plan, record, ip, here_runs):
    """Demote the host that does not run the VM, then single-primary on both, confirmed."""
    name = record["name"]
    drbd = host.drbd(name)
    if here_runs and drbd.get("peer_role") != "Secondary":
        plan.step(f"ssh root@{ip} drbdadm secondary {name}",
                  _on_peer, host, ip, ["drbdadm", "secondary", name], "demoting DRBD")
    elif not here_runs and drbd.get("role") != "Secondary":
        plan.step(f"drbdadm secondary {name} (once the VM's QEMU has left)", _demote_here, host, name)
    plan.step(f"drbdadm net-options --allow-two-primaries=no {name}",
              host.salt["drbd.net_options"], name, False)
    plan.step(f"ssh root@{ip} drbdadm net-options --allow-two-primaries=no {name}",
              _on_peer, host, ip, ["drbdadm", "net-options", "--allow-two-primaries=no", name],
              "forbidding two primaries")
    plan.step(f"drbdsetup show {name} on both hosts: no allow-two-primaries", _confirm_single, host, ip,
              name)


def _demote_here(host, name):
    deadline = time.monotonic() + DEMOTE_WAIT
    while True:
        try:
            return host.salt["drbd.secondary"](name)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(POLL)


def _confirm_single(host, ip, name):
    here = host.salt["drbd.show"](name)
    there = _on_peer(host, ip, ["drbdsetup", "show", name], "drbdsetup show")
    still = [who for who, text in ((host.me, here), (ip, there)) if drbdconf.two_primaries(text)]
    if still:
        raise Failed(f"DRBD resource {name} still allows two primaries on {', '.join(still)}")


def _settle(host, plan, conn, pconn, record, peer, ip):
    """After a failed migration: wherever the VM runs now, end the window there (the abort
    leaves it here; a failure after the switch-over leaves it there). None when that
    worked, else what is left to do."""
    name = record["name"]
    runs_here = _safe(lambda: _runs_on(conn, name)) is True
    runs_there = _safe(lambda: _runs_on(pconn, name)) is True
    action = migration.cleanup_action(name, host.me, peer, runs_here, runs_there)
    if action[0] != "finish":
        return action[1]
    try:
        _finish(host, plan, record, ip, here_runs=action[1] == host.me)
    except Exception as exc:  # noqa: BLE001 - reported with the migration's error
        return f"the DRBD window is still open: {exc}"
    return None


def _cleanup(host, plan, record, peer, ip):
    name = record["name"]
    with host.libvirt() as conn, _peer_libvirt(ip) as (pconn, perror):
        if perror:
            raise Failed(f"cannot ask {peer} where VM {name} runs: its libvirt does not answer: {perror}")
        action = migration.cleanup_action(name, host.me, peer, _runs_on(conn, name), _runs_on(pconn, name))
    if action[0] != "finish":
        raise Failed(action[1])
    _finish(host, plan, record, ip, here_runs=action[1] == host.me)
    return plan.result(f"VM {name} runs on {action[1]}; DRBD is single-primary again")
