"""The pair's figures for Prometheus and Graphite (pure: no I/O).

``collect`` turns what one collection read (the VM records, DRBD with
statistics, libvirt's domain statistics, the LVs, the backup state file)
into samples ``(name, labels, value)``; ``exposition`` writes them in
Prometheus's text format (for node_exporter's textfile collector),
``graphite`` as Graphite plaintext lines. Names follow Prometheus's rules:
prefix ``pairvm_``, base units (bytes, seconds, ratios 0-1) in the name,
``_total`` on counters, a state as one series per state with value 0 or 1
(the drbd-reactor style), labels for dimensions. ``FAMILIES`` lists every
name with its type and help: the README's Monitoring section and
``docs/alerts.yml`` use these names.
"""

import ipaddress
import math
import re

from pairvmlib import defaults
from pairvmlib.errors import Invalid

KIB = 1024
MIB = 2**20
# libvirt's virDomainState values of a domain that exists in QEMU (running, blocked,
# paused, being shut down, suspended by the guest); 0 nostate, 5 shutoff, 6 crashed are not.
ACTIVE_STATES = {1, 2, 3, 4, 7}
CONNECTION_STATES = ("StandAlone", "Connecting", "Connected")
DISK_STATES = ("Diskless", "Inconsistent", "Outdated", "DUnknown", "Consistent", "UpToDate")
ROLES = ("Primary", "Secondary", "Unknown")
REPLICATION_STATES = ("Off", "Established", "SyncSource", "SyncTarget")
BACKUP_RESULTS = ("success", "failure")
SOURCES = ("drbd", "libvirt", "lvm", "backup_state")

# Every family: NAME TYPE: HELP (lines starting with # group them).
FAMILY_TABLE = """
# DRBD, per VM whose resource is up on this host
pairvm_drbd_connection_state gauge: DRBD connection state of the VM's resource (1 = current)
pairvm_drbd_replication_state gauge: DRBD replication state of the VM's resource (1 = current)
pairvm_drbd_disk_state gauge: DRBD disc state, side local or peer (1 = current)
pairvm_drbd_role gauge: DRBD role, side local or peer (1 = current)
pairvm_drbd_split_brain gauge: 1 when the resource is StandAlone after an unresolved split brain
pairvm_drbd_out_of_sync_bytes gauge: Bytes this side knows to differ from the peer
pairvm_drbd_resync_done_ratio gauge: Share of the device in sync with the peer (0-1; 1: nothing out of sync)
pairvm_drbd_network_sent_bytes_total counter: Bytes sent to the peer over the replication link
pairvm_drbd_network_received_bytes_total counter: Bytes received from the peer
pairvm_drbd_disk_read_bytes_total counter: Bytes read from the local backing disc
pairvm_drbd_disk_written_bytes_total counter: Bytes written to the local backing disc
pairvm_drbd_device_size_bytes gauge: Size of the DRBD device
# VMs, per VM defined on this host (/machines)
pairvm_vm_info gauge: A VM defined on this host: its home and the reporting host (always 1)
pairvm_vm_should_run gauge: 1 when the VM's desired state is running and it is not suppressed here
pairvm_vm_running gauge: 1 when the VM runs on this host
pairvm_vm_away gauge: 1 when the VM runs on this host and this host is not its home
pairvm_vm_memory_bytes gauge: Memory given to the VM
pairvm_vm_vcpus gauge: Virtual CPUs of the VM
pairvm_vm_disc_size_bytes gauge: Size of the VM's LV on this host
pairvm_vm_cpu_seconds_total counter: CPU time the running VM used on this host
pairvm_vm_disc_read_bytes_total counter: Bytes the running VM read from its discs
pairvm_vm_disc_written_bytes_total counter: Bytes the running VM wrote to its discs
# backups made from this host (pairvm.backup keeps the state file)
pairvm_backup_last_success_timestamp_seconds gauge: End of the last good backup from this host (Unix time)
pairvm_backup_last_duration_seconds gauge: Duration of the VM's last backup attempt
pairvm_backup_last_size_bytes gauge: Bytes of disc read by the VM's last successful backup
pairvm_backup_last_result gauge: Result of the VM's last backup attempt (1 = current)
# the pair and this host
pairvm_pair_memory_cap_bytes gauge: The pair's memory cap (0: none)
pairvm_pair_memory_defined_bytes gauge: Memory of every VM of the pair
pairvm_host_memory_running_bytes gauge: Memory of the VMs running on this host
pairvm_collector_success gauge: 1 when the source's one query of this collection answered
pairvm_collection_timestamp_seconds gauge: When this collection was made (Unix time)
"""
FAMILIES = {name: tuple(rest.split(": ", 1)) for name, rest in
            (line.split(" ", 1) for line in FAMILY_TABLE.strip().splitlines() if not line.startswith("#"))}


def _states(name, labels, key, current, known):
    """One sample per known state (and the current one if unknown), 1 for the current."""
    if current is None:
        return []
    return [(name, dict(labels, **{key: state}), int(state == current))
            for state in (known if current in known else (*known, current))]


def _drbd(vm, drbd):
    labels = {"vm": vm}
    samples = _states("pairvm_drbd_connection_state", labels, "state", drbd.get("connection"),
                      CONNECTION_STATES)
    samples += _states("pairvm_drbd_replication_state", labels, "state", drbd.get("replication"),
                       REPLICATION_STATES)
    for side, disk, role in (("local", drbd.get("disk"), drbd.get("role")),
                             ("peer", drbd.get("peer_disk"), drbd.get("peer_role"))):
        samples += _states("pairvm_drbd_disk_state", dict(labels, side=side), "state", disk, DISK_STATES)
        samples += _states("pairvm_drbd_role", dict(labels, side=side), "role", role, ROLES)
    samples.append(("pairvm_drbd_split_brain", labels, int(bool(drbd.get("split_brain")))))
    stats = drbd.get("statistics") or {}
    for key, name in (("out_of_sync", "pairvm_drbd_out_of_sync_bytes"),
                      ("sent", "pairvm_drbd_network_sent_bytes_total"),
                      ("received", "pairvm_drbd_network_received_bytes_total"),
                      ("read", "pairvm_drbd_disk_read_bytes_total"),
                      ("written", "pairvm_drbd_disk_written_bytes_total"),
                      ("size", "pairvm_drbd_device_size_bytes")):
        if key in stats:
            samples.append((name, labels, stats[key] * KIB))
    if stats.get("size"):
        done = 1 - min(stats.get("out_of_sync", 0), stats["size"]) / stats["size"]
        samples.append(("pairvm_drbd_resync_done_ratio", labels, round(done, 6)))
    return samples


def domain_figures(stats):
    """What the metrics use of one domain's ``getAllDomainStats`` record."""
    figures = {"running": stats.get("state.state") in ACTIVE_STATES}
    if "cpu.time" in stats:
        figures["cpu_seconds"] = stats["cpu.time"] / 1e9
    count = stats.get("block.count")
    if count is not None:
        figures["read_bytes"] = sum(stats.get(f"block.{i}.rd.bytes", 0) for i in range(count))
        figures["written_bytes"] = sum(stats.get(f"block.{i}.wr.bytes", 0) for i in range(count))
    return figures


def _vm(vm, record, me, domain, lvs, suppressed):
    labels = {"vm": vm}
    running = bool(domain and domain["running"])
    home = record.get("home")
    samples = [
        ("pairvm_vm_info", {"vm": vm, "home": str(home), "host": me}, 1),
        ("pairvm_vm_should_run", labels, int(record.get("state", "running") == "running"
                                             and not record.get("suppress") and vm not in suppressed)),
        ("pairvm_vm_running", labels, int(running)),
        ("pairvm_vm_away", labels, int(running and home != me)),
        ("pairvm_vm_memory_bytes", labels, int(record.get("memory") or 0) * MIB),
        ("pairvm_vm_vcpus", labels, int(record.get("vcpus") or 1)),
    ]
    vg = ((record.get("hosts") or {}).get(me) or {}).get("vg")
    if vg and f"{vg}/{vm}" in lvs:
        samples.append(("pairvm_vm_disc_size_bytes", labels, lvs[f"{vg}/{vm}"] * MIB))
    if running:
        for key, name in (("cpu_seconds", "pairvm_vm_cpu_seconds_total"),
                          ("read_bytes", "pairvm_vm_disc_read_bytes_total"),
                          ("written_bytes", "pairvm_vm_disc_written_bytes_total")):
            if key in domain:
                samples.append((name, labels, domain[key]))
    return samples


def _backup(vm, state):
    labels = {"vm": vm}
    samples = []
    if state.get("last_success") is not None:
        samples.append(("pairvm_backup_last_success_timestamp_seconds", labels, state["last_success"]))
    if state.get("duration") is not None:
        samples.append(("pairvm_backup_last_duration_seconds", labels, state["duration"]))
    if state.get("size") is not None:
        samples.append(("pairvm_backup_last_size_bytes", labels, state["size"]))
    result = "success" if state.get("result") is True else "failure" if state.get("result") is False else None
    return samples + _states("pairvm_backup_last_result", labels, "result", result, BACKUP_RESULTS)


def collect(me, view, records, drbd, domains, lvs, backups, suppressed=(), failed=(), now=0.0):
    """Samples of one collection on host ``me``.

    ``view``: ``/machines/_global``; ``records``: ``{vm: record}``; ``drbd``:
    ``drbd.status(statistics=True)``; ``domains``: ``{name: domain_figures(..)}``;
    ``lvs``: ``{"vg/lv": MiB}``; ``backups``: the backup state ``{vm: {...}}``;
    ``suppressed``: VMs suppressed here; ``failed``: the sources whose query
    failed (their figures are absent, ``pairvm_collector_success`` says so).
    """
    samples = []
    for vm in sorted(records):
        samples += _vm(vm, records[vm], me, domains.get(vm), lvs, set(suppressed))
        if drbd.get(vm):
            samples += _drbd(vm, drbd[vm])
    for vm in sorted(backups):
        if vm in records:
            samples += _backup(vm, backups[vm])
    memory = [int(r.get("memory") or 0) for r in records.values()]
    running = [int(r.get("memory") or 0) for vm, r in records.items()
               if (domains.get(vm) or {}).get("running")]
    samples += [
        ("pairvm_pair_memory_cap_bytes", {}, int(view.get("memory_cap") or 0) * MIB),
        ("pairvm_pair_memory_defined_bytes", {}, sum(memory) * MIB),
        ("pairvm_host_memory_running_bytes", {}, sum(running) * MIB),
    ]
    samples += [("pairvm_collector_success", {"source": source}, int(source not in failed))
                for source in SOURCES]
    samples.append(("pairvm_collection_timestamp_seconds", {}, round(now, 3)))
    return samples


# --- Prometheus text format -----------------------------------------------------------------


def _label_value(value):
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value):
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        return repr(value) if value != int(value) or abs(value) >= 1e15 else str(int(value))
    return str(value)


def exposition(samples):
    """Prometheus text format 0.0.4: every family once, HELP and TYPE before its samples."""
    by_name = {}
    for name, labels, value in samples:
        by_name.setdefault(name, []).append((labels, value))
    lines = []
    for name in sorted(by_name):
        kind, text = FAMILIES[name]
        lines += [f"# HELP {name} {text}.", f"# TYPE {name} {kind}"]
        for labels, value in by_name[name]:
            shown = ",".join(f'{k}="{_label_value(v)}"' for k, v in sorted(labels.items()))
            lines.append(f"{name}{{{shown}}} {_number(value)}" if shown else f"{name} {_number(value)}")
    return "\n".join(lines) + "\n"


# --- Graphite plaintext -----------------------------------------------------------------------

# The old tool's fields per VM, from the same figures: (family, its labels besides vm) -> field.
GRAPHITE_VM = {
    "pairvm_drbd_network_sent_bytes_total": "drbd.sent_bytes",
    "pairvm_drbd_network_received_bytes_total": "drbd.received_bytes",
    "pairvm_drbd_disk_read_bytes_total": "drbd.read_bytes",
    "pairvm_drbd_disk_written_bytes_total": "drbd.written_bytes",
    "pairvm_drbd_out_of_sync_bytes": "drbd.out_of_sync_bytes",
    "pairvm_drbd_resync_done_ratio": "drbd.resync_done_ratio",
    "pairvm_drbd_split_brain": "drbd.split_brain",
    "pairvm_vm_running": "running",
    "pairvm_vm_away": "away",
    "pairvm_vm_memory_bytes": "memory_bytes",
    "pairvm_vm_vcpus": "vcpus",
    "pairvm_vm_cpu_seconds_total": "cpu_seconds",
    "pairvm_vm_disc_read_bytes_total": "disc_read_bytes",
    "pairvm_vm_disc_written_bytes_total": "disc_written_bytes",
    "pairvm_backup_last_success_timestamp_seconds": "backup.last_success_time",
    "pairvm_backup_last_size_bytes": "backup.last_size_bytes",
}
GRAPHITE_HOST = {
    "pairvm_pair_memory_cap_bytes": "memory_cap_bytes",
    "pairvm_pair_memory_defined_bytes": "memory_defined_bytes",
    "pairvm_host_memory_running_bytes": "memory_running_bytes",
}


def _path_part(text):
    """A Graphite path component: dots and anything outside [A-Za-z0-9_-] become ``_``."""
    return "".join(c if c.isascii() and (c.isalnum() or c in "_-") else "_" for c in str(text))


def graphite(samples, prefix, me, now, load=None):
    """Graphite plaintext lines ``PATH VALUE TIMESTAMP``: per VM
    ``PREFIX.pairvm.VM.FIELD`` (``drbd.*`` as the old tool), and per host
    ``PREFIX.pairvm.host.HOST.FIELD`` (memory, ``load1/5/15`` from ``load``)."""
    base = ".".join(p for p in (prefix, "pairvm") if p)
    stamp = int(now)
    lines = []
    for name, labels, value in samples:
        if name in GRAPHITE_VM and "vm" in labels:
            lines.append(f"{base}.{_path_part(labels['vm'])}.{GRAPHITE_VM[name]} {_number(value)} {stamp}")
        elif name in GRAPHITE_HOST:
            lines.append(f"{base}.host.{_path_part(me)}.{GRAPHITE_HOST[name]} {_number(value)} {stamp}")
    for field, value in zip(("load1", "load5", "load15"), load or ()):  # noqa: B905 - three or none
        lines.append(f"{base}.host.{_path_part(me)}.{field} {_number(float(value))} {stamp}")
    return lines


def check_prefix(prefix):
    """A Graphite prefix: dot-separated parts of [A-Za-z0-9_-], or empty (None: empty)."""
    text = "" if prefix is None else str(prefix)
    if text and not all(part and _path_part(part) == part for part in text.split(".")):
        raise Invalid(f"invalid Graphite prefix {text!r}: expected dot-separated parts of letters, digits, "
                      f"_ and -")
    return text


HOSTNAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*")


def check_carbon(carbon):
    """``(host, port)`` of a carbon receiver given as ``HOST[:PORT]`` (port 2003 by default;
    an IPv6 address as ``[ADDR]:PORT``)."""
    text = str(carbon).strip()
    host, port = text, "2003"
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?", text)
    if match:
        host, port = match.group(1), match.group(2) or port
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        ipaddress.ip_address(host)
        valid_host = True
    except ValueError:
        valid_host = bool(HOSTNAME_RE.fullmatch(host)) and len(host) <= 253
    if not valid_host or not (port.isdigit() and 1 <= int(port) <= 65535):
        raise Invalid(f"invalid carbon receiver {text!r}: expected HOST or HOST:PORT (port 1-65535)")
    return host, int(port)


def carbon_text(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- settings (pillar pairvm:metrics) -------------------------------------------------------


def _seconds(value, what, low):
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 86400:
        raise Invalid(f"{what} must be a whole number of seconds from {low} to 86400, got {value!r}")
    return value


def check_textfile(path):
    """An absolute path of a ``.prom`` file (node_exporter reads only those)."""
    text = str(path)
    if not text.startswith("/") or not text.endswith(".prom") or any(c in text for c in "\n\0") \
            or "/../" in f"{text}/":
        raise Invalid(f"invalid metrics textfile {text!r}: expected an absolute path ending in .prom")
    return text


def settings(given):
    """Pillar ``pairvm:metrics`` merged over its defaults and checked."""
    given = given or {}
    if not isinstance(given, dict) or not isinstance(given.get("graphite", {}) or {}, dict):
        raise Invalid("pairvm:metrics must be a mapping (textfile, interval, graphite)")
    unknown = sorted(set(given) - set(defaults.METRICS))
    graphite_given = given.get("graphite") or {}
    unknown += [f"graphite:{k}" for k in sorted(set(graphite_given) - set(defaults.METRICS["graphite"]))]
    if unknown:
        raise Invalid(f"pairvm:metrics: unknown key(s) {', '.join(map(str, unknown))}")
    merged = {**defaults.METRICS, **given, "graphite": {**defaults.METRICS["graphite"], **graphite_given}}
    graphite_ = merged["graphite"]
    carbon = graphite_["carbon"]
    return {
        "textfile": check_textfile(merged["textfile"]),
        "interval": _seconds(merged["interval"], "pairvm:metrics:interval", 0),
        "graphite": {
            "carbon": None if carbon is None else carbon_text(*check_carbon(carbon)),
            "prefix": check_prefix(graphite_["prefix"]),
            "interval": _seconds(graphite_["interval"], "pairvm:metrics:graphite:interval", 1),
        },
    }
