"""pairvm (metrics): the pair's figures for Prometheus and Graphite.

Part of the ``pairvm`` execution module: this file shares its virtual name
and its gate (docs/architecture.md). One collection queries DRBD (one
``drbdsetup events2 --now --statistics all``), libvirt (one
``getAllDomainStats``) and LVM (one ``lvs``) once each, however many VMs
there are, and reads ``/machines`` and the backup state file that
``pairvm.backup`` keeps. The names and their meaning: ``pairvmlib.metrics``
and the README's "Monitoring" section.

:depends: libvirt-python, drbd-utils, lvm2
"""

import logging
import os
import socket
import time

from pairvmlib import backupstate, boundary, machines
from pairvmlib import host as hostlib
from pairvmlib import metrics as metricslib
from pairvmlib.errors import Failed, PairvmError
from salt.exceptions import CommandExecutionError, SaltInvocationError

__virtualname__ = boundary.VIRTUAL_NAME
__virtual__ = boundary.virtual  # the one gate of every pairvm file (docs/architecture.md)

log = logging.getLogger(__name__)
STATS = ("STATE", "CPU_TOTAL", "BLOCK")
CARBON_TIMEOUT = 10  # seconds to connect to and send to a carbon receiver


def _host():
    return hostlib.Host.of(globals())


def _domains(host):
    """{name: figures} of every libvirt domain (one ``getAllDomainStats`` call)."""
    libvirt = hostlib.libvirt
    flags = 0
    for stat in STATS:
        flags |= getattr(libvirt, f"VIR_DOMAIN_STATS_{stat}")
    with host.libvirt() as conn:
        try:
            found = conn.getAllDomainStats(flags, 0)
        except libvirt.libvirtError as exc:
            raise Failed(f"libvirt: cannot read the domains' statistics: {exc}") from exc
        return {dom.name(): metricslib.domain_figures(stats) for dom, stats in found}


def _query(failed, source, query, default):
    """One source's query; a failure is logged and named in ``failed``, the others go on."""
    try:
        return query()
    except (PairvmError, CommandExecutionError, SaltInvocationError, OSError, ValueError, KeyError) as exc:
        log.warning("pairvm metrics: %s query failed: %s", source, exc)
        failed.append(source)
        return default


def _samples(host):
    records = host.machines()
    view = host.view()
    failed = []
    host.forget_runtime()  # fresh figures, not those of earlier in this job
    drbd = _query(failed, "drbd", lambda: __salt__["drbd.status"](statistics=True), {}) if records else {}
    domains = _query(failed, "libvirt", lambda: _domains(host), {}) if records else {}
    lvs = _query(failed, "lvm", host.lvs, {}) if records else {}
    backups = _query(failed, "backup_state", backupstate.read, {})
    return metricslib.collect(view.get("me", host.me), view, records, drbd, domains, lvs, backups,
                           suppressed=machines.suppressed(), failed=failed, now=time.time())


@boundary.execution
def metrics():
    """
    This host's pairvm metrics in Prometheus's text format.

    DRBD per VM (connection, replication and disc states, roles, split
    brain, out-of-sync bytes, resync done ratio, bytes sent/received/read/
    written), the VMs (``pairvm_vm_info{vm,home,host}``, should run,
    running, away, memory, vCPUs, disc size, CPU seconds, disc bytes read
    and written), the backups made from this host (last success time, last
    duration, last size, last result) and the pair's memory cap and use.
    One query each of DRBD, libvirt and LVM, however many VMs; a source
    that fails is left out and ``pairvm_collector_success{source}`` is 0.
    Reads only.

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm.metrics
    """
    return metricslib.exposition(_samples(_host()))


@boundary.execution
def write_metrics(path=None, test=False):
    """
    Write this host's metrics for node_exporter's textfile collector.

    ``path`` (default pillar ``pairvm:metrics:textfile``, else
    ``/var/lib/prometheus/node-exporter/pairvm.prom``) is written under a
    temporary name and renamed, so node_exporter never reads half a file;
    only when the text changed. The state ``pairvm.host.metrics`` schedules
    it. ``test=True`` lists the write without doing it.

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm.write_metrics
        salt hostA pairvm.write_metrics path=/var/lib/node_exporter/textfile/pairvm.prom
        salt hostA pairvm.write_metrics test=True
    """
    target = metricslib.check_textfile(path) if path is not None else _settings()["textfile"]
    host = _host()
    text = metricslib.exposition(_samples(host))
    plan = host.plan(os.path.basename(target), test)
    plan.write(target, text, mode=0o644)
    result = plan.result(f"metrics written to {target}" if plan.changes else f"{target} is up to date")
    result["path"] = target
    return result


def _settings(given=None):
    return metricslib.settings(given if given is not None else __pillar__.get("pairvm", {}).get("metrics"))


@boundary.execution
def metrics_settings(given=None):
    """
    The metrics settings: ``given`` (default pillar ``pairvm:metrics``) over
    their defaults, checked: ``textfile``, ``interval``, ``graphite:
    {carbon, prefix, interval}``. What the state ``pairvm.host.metrics``
    turns into scheduler jobs; a bad value is an error naming the key.

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm.metrics_settings
    """
    return _settings(given)


@boundary.execution
def graphite_stats(prefix=None, carbon=None):
    """
    This host's figures as Graphite plaintext lines (the old ``graphite_stats``).

    Lines ``PREFIX.pairvm.VM.FIELD VALUE TIMESTAMP`` per VM (``drbd.*``:
    sent/received/read/written bytes, out-of-sync bytes, resync done ratio,
    split brain; running, away, memory, vCPUs, CPU seconds, disc bytes,
    last backup) and ``PREFIX.pairvm.host.HOST.FIELD`` per host (memory cap,
    defined and running memory, load1/5/15). Returned as text by default
    (what the host command prints, as the old tool did), or sent over TCP
    to the carbon receiver ``carbon`` (``HOST[:PORT]``, port 2003 by
    default); the state ``pairvm.host.metrics`` schedules that with pillar
    ``pairvm:metrics:graphite``. ``prefix`` defaults to that pillar's
    ``prefix`` (none without pillar).

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm.graphite_stats
        salt hostA pairvm.graphite_stats prefix=servers carbon=graphite.example.net:2003
    """
    if prefix is None:
        prefix = _settings()["graphite"]["prefix"] if __pillar__.get("pairvm") else ""
    prefix = metricslib.check_prefix(prefix)
    target = metricslib.check_carbon(carbon) if carbon is not None else None
    host = _host()
    lines = metricslib.graphite(_samples(host), prefix, host.view().get("me", host.me), time.time(),
                                os.getloadavg())
    if target is None:
        return "\n".join(lines)
    _send(target, "".join(f"{line}\n" for line in lines))
    return {"sent": len(lines), "carbon": metricslib.carbon_text(*target)}


def _send(target, text):
    try:
        with socket.create_connection(target, timeout=CARBON_TIMEOUT) as conn:
            conn.sendall(text.encode("ascii"))
    except OSError as exc:
        raise Failed(f"cannot send to carbon at {metricslib.carbon_text(*target)}: {exc}") from exc
