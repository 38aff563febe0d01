"""pairvm (health): list the VMs, check this host, report its whole state.

Part of the ``pairvm`` execution module: this file shares its virtual name
and its gate (docs/architecture.md). ``list`` and ``facts`` query LVM, DRBD
and libvirt once each, however many VMs there are; ``check_system`` is also
what the host command's ``first_time_setup`` runs.

:depends: libvirt-python, drbd-utils, lvm2, iproute2, iputils-ping
"""

import json
import math
import os

import yaml

import salt.utils.path
from pairvmlib import boundary, drbdconf, layout, machines, names, render
from pairvmlib import host as hostlib
from pairvmlib.errors import Failed, PairvmError
from salt.exceptions import CommandExecutionError, SaltInvocationError

__virtualname__ = boundary.VIRTUAL_NAME
__virtual__ = boundary.virtual  # the one gate of every pairvm file (docs/architecture.md)
__func_alias__ = {"list_": "list"}

LIST_FIELDS = (
    "name", "memory", "disc", "running", "location", "vnc_display",
    "drbd_connection", "drbd_disk", "mac", "ip",
)
REQUIRED_TOOLS = (
    "qemu-system-x86_64", "qemu-img", "virsh", "drbdadm", "drbdsetup", "lvm",
    "ip", "bridge", "socat", "pigz", "zstd", "pv", "ssh", "openssl", "setpriv",
)
SYS_CLASS_NET = "/sys/class/net"
IFF_UP = 0x1
VIEW_KEYS = ("me", "peer", "here_ip", "there_ip", "here_replication_ip", "there_replication_ip")


def _host():
    return hostlib.Host.of(globals())


# --- list ----------------------------------------------------------------------------------


def _row(name, conf, running, drbd, me):
    home = conf.get("home")
    return {
        "name": name,
        "memory": conf.get("memory"),
        "disc": conf.get("disc_mib", conf.get("disc")),
        "running": name in running,
        "location": "home" if home == me else "away",
        "vnc_display": conf.get("vnc_display"),
        "drbd_connection": drbd.get(name, {}).get("connection", "Unconfigured"),
        "drbd_disk": drbd.get(name, {}).get("disk", "Unconfigured"),
        "mac": conf.get("mac"),
        "ip": conf.get("ip"),
    }


@boundary.execution
def list_(fields=None):
    """
    List the VMs this host knows, with their runtime state.

    Returns ``{"vms": [row, ...], "memory": {...}}``. Each row has name,
    memory (MiB), disc (MiB), running, location (``home`` or ``away`` as seen
    from this host), VNC display, DRBD connection and disc state, MAC and IP.
    ``memory`` totals the RAM (MiB) of the VMs homed here, of those homed on
    the peer, and of those running on this host, with the pair's cap.
    ``fields`` (a comma-separated list or a list, like the old ``pairvm list
    param``) keeps only those columns.

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm.list
        salt hostA pairvm.list fields=name,ip
    """
    wanted = _parse_fields(fields)
    host = _host()
    records = host.machines()
    view = host.view()
    me = view.get("me", host.me)
    running = host.running() if records else set()
    drbd = host.drbd() if records else {}
    rows = [_row(name, conf, running, drbd, me) for name, conf in records.items()]
    memory = {
        "here": sum(r["memory"] or 0 for r in rows if r["location"] == "home"),
        "there": sum(r["memory"] or 0 for r in rows if r["location"] == "away"),
        "running": sum(r["memory"] or 0 for r in rows if r["running"]),
        "cap": view.get("memory_cap"),
    }
    return {"vms": [{k: r[k] for k in wanted} for r in rows], "memory": memory}


def _parse_fields(fields):
    if fields is None:
        return LIST_FIELDS
    if isinstance(fields, str):
        fields = [f.strip() for f in fields.split(",") if f.strip()]
    unknown = [f for f in fields if f not in LIST_FIELDS]
    if unknown or not fields:
        raise Failed(
            f"unknown list field(s) {', '.join(map(str, unknown)) or '(none given)'}; "
            f"choose from {', '.join(LIST_FIELDS)}"
        )
    return ["name"] + [f for f in fields if f != "name"]


# --- check_system (and the host command's first_time_setup) ---------------------------------


def _check_view(host, view):
    if not view:
        return False, (f"{layout.global_path()} does not exist: apply the state pairvm.host to this host "
                       f"(salt {host.me} state.apply pairvm.host)")
    missing = [key for key in VIEW_KEYS if view.get(key) is None]
    if missing:
        return False, f"{layout.global_path()} lacks {', '.join(missing)}: re-apply the state pairvm.host"
    return True, f"this host is {view['me']}, its peer {view['peer']}"


def _check_tools(host, view):
    missing = [tool for tool in REQUIRED_TOOLS if not salt.utils.path.which(tool)]
    return not missing, "all present" if not missing else "missing: " + ", ".join(missing)


def _local_addresses(host):
    """{address: interface} of every address of this host (one ``ip -j addr``)."""
    listing = json.loads(host.run(["ip", "-j", "addr"], "ip -j addr"))
    return {a["local"]: iface.get("ifname", "?") for iface in listing
            for a in iface.get("addr_info", []) if "local" in a}


def _check_addresses(host, view):
    wanted = {key: view.get(key) for key in ("here_ip", "here_replication_ip")}
    if None in wanted.values():
        return False, f"{layout.global_path()} names no admin and replication address of this host"
    local = _local_addresses(host)
    absent = [f"{address} ({key})" for key, address in wanted.items() if address not in local]
    if absent:
        return False, f"not an address of this host (ip addr): {', '.join(absent)}"
    return True, ", ".join(f"{address} on {local[address]}" for address in wanted.values())


def _check_volume_groups(host, view):
    wanted = host.setting("volume_groups")
    found = _volume_groups(host)
    missing = [vg for vg in wanted if vg not in found]
    if missing:
        return False, (f"missing volume group(s): {', '.join(missing)} "
                       f"(pillar pairvm:host:volume_groups, or vgcreate VG DEVICE)")
    return True, ", ".join(f"{vg} {found[vg]['free']} free of {found[vg]['size']}" for vg in wanted)


def _check_bridge(host, view):
    bridge = host.setting("bridge")
    found = _bridges([bridge])[bridge]
    if not found["present"]:
        return False, f"bridge {bridge} does not exist (or is no bridge)"
    if not found["up"]:
        return False, f"bridge {bridge} is down (ip link set {bridge} up)"
    return True, f"bridge {bridge} is up (operstate {found['state']})"


def _check_libvirt(host, view):
    with host.libvirt() as conn:
        version = conn.getLibVersion()
    return True, (f"{host.setting('libvirt_uri')} answers "
                  f"(libvirt {version // 1000000}.{version // 1000 % 1000}.{version % 1000})")


def _check_peer(host, view):
    """The peer answers one ping on the admin link and on the replication link."""
    failed, answered = [], []
    for key, link in (("there_ip", "admin"), ("there_replication_ip", "replication")):
        address = view.get(key)
        res = __salt__["cmd.run_all"](["ping", "-c", "1", "-W", "2", str(address)], python_shell=False,
                                      ignore_retcode=True) if address else {"retcode": None}
        (answered if res["retcode"] == 0 else failed).append(f"{link} {address}")
    if failed:
        return False, f"{view.get('peer') or 'the peer'} does not answer ping on: {', '.join(failed)}"
    return True, f"{view.get('peer')} answers ping on {', '.join(answered)}"


CHECKS = (
    ("host", _check_view), ("tools", _check_tools), ("addresses", _check_addresses),
    ("volume_groups", _check_volume_groups), ("bridge", _check_bridge), ("libvirt", _check_libvirt),
    ("peer", _check_peer),
)


@boundary.execution
def check_system():
    """
    Check that this host can run pairvm VMs (the old ``check_system``).

    Against this host's view of the pair (``/machines/_global``, written by
    the state ``pairvm.host``): that view itself, the required tools, this
    host's admin and replication addresses, the volume groups, the VM bridge
    (present and up), that libvirt answers, and that the peer answers ping
    on both links. Returns ``{"ok": bool, "checks": {name: {"ok": bool,
    "detail": str}}}``; the job's retcode is non-zero when a check fails.
    The host command's ``pairvm first_time_setup`` runs the same checks.

    CLI Example:

    .. code-block:: bash

        salt '*' pairvm.check_system
    """
    host = _host()
    try:
        view = host.view()
    except Failed:
        view = {}
    checks = {}
    for name, check in CHECKS:
        try:
            ok, detail = check(host, view)
        except (PairvmError, OSError, ValueError, KeyError, TypeError) as exc:
            ok, detail = False, str(exc)
        checks[name] = {"ok": ok, "detail": detail}
    healthy = all(c["ok"] for c in checks.values())
    if not healthy:
        __context__["retcode"] = 1
    return {"ok": healthy, "checks": checks}


def _volume_groups(host):
    """{vg: {"size", "free", "extent_mib"}} of this host (one ``vgs`` call); ``extent_mib``: the
    VG's extent size in whole MiB, rounded up (LVM gives every LV a whole number of extents)."""
    out = host.run(["vgs", "--reportformat", "json", "-o", "vg_name,vg_size,vg_free,vg_extent_size",
                    "--units", "m"], "vgs")
    report = json.loads(out)["report"][0]["vg"]
    return {vg["vg_name"]: {"size": vg.get("vg_size"), "free": vg.get("vg_free"),
                            "extent_mib": _mib(vg.get("vg_extent_size"))} for vg in report}


def _mib(text):
    """``"4.00m"`` -> 4; a part of a MiB counts as one; None when LVM gave no size."""
    try:
        return max(1, math.ceil(float(str(text).lower().rstrip("m"))))
    except ValueError:
        return None


def _bridges(wanted):
    """{bridge: {"present", "up", "state"}} from /sys/class/net: a bridge, administratively up."""
    found = {}
    for name in sorted(wanted):
        base = os.path.join(SYS_CLASS_NET, name)
        present = names.is_ifname(name) and os.path.isdir(os.path.join(base, "bridge"))
        state, up = None, False
        if present:
            state = (machines.read_text(os.path.join(base, "operstate")) or "").strip() or None
            up = bool(int((machines.read_text(os.path.join(base, "flags")) or "0").strip(), 16) & IFF_UP)
        found[name] = {"present": present, "up": up, "state": state}
    return found


# --- facts: this host's whole state in one call, for salt-run pairvm.verify ------------------


def _facts_machines(host, errors):
    """{name: summary} of every /machines/<vm> file: digest of its bytes, the fields verify uses."""
    found = {}
    for name in machines.vm_names():
        try:
            data = machines.record_bytes(name) or b""
        except OSError as exc:
            errors[f"machines/{name}"] = f"cannot read {layout.machine_path(name)}: {exc}"
            continue
        summary = {"digest": render.machines_digest(data)}
        try:
            record = yaml.safe_load(data.decode("utf-8"))
        except (ValueError, yaml.YAMLError) as exc:  # reported, not fatal
            record, summary["error"] = None, f"not valid YAML: {exc}"
        if not isinstance(record, dict):
            summary.setdefault("error", "not a mapping of VM settings")
            record = {}
        hosts = record.get("hosts") if isinstance(record.get("hosts"), dict) else {}
        mine = hosts.get(host.me) if isinstance(hosts.get(host.me), dict) else {}
        summary.update({key: record.get(key) for key in ("home", "peer", "memory", "state", "suppress",
                                                        "bridge", "vnc_display")})
        summary["vg"] = mine.get("vg")
        found[name] = summary
    return found


def _facts_query(errors, key, query, default):
    """Run one query; a failure is noted in ``errors[key]`` and gives ``default``."""
    try:
        return query()
    except (PairvmError, CommandExecutionError, SaltInvocationError, OSError, ValueError) as exc:
        errors[key] = str(exc)
    except (KeyError, IndexError, TypeError) as exc:
        errors[key] = f"unexpected answer: {type(exc).__name__}: {exc}"
    return default


def _facts_drbd():
    if "drbd.status" not in __salt__:
        raise Failed("the drbd execution module is not available here (drbd-utils missing?)")
    return __salt__["drbd.status"]()


def _facts_libvirt(host, records):
    """(running domain names, {running pairvm domain: VNC listen address}), one connection."""
    libvirt = hostlib.libvirt
    with host.libvirt() as conn:
        try:
            active = {dom.name(): dom for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)}
        except libvirt.libvirtError as exc:
            raise Failed(f"libvirt: cannot list the running domains: {exc}") from exc
        vnc = {}
        for name in sorted(set(active) & set(records)):
            try:
                xml = active[name].XMLDesc(0)
            except libvirt.libvirtError:  # stopped since it was listed
                continue
            vnc[name] = render.domain_summary(xml)["vnc_listen"]
    return sorted(active), vnc


@boundary.execution
def facts(bridges=None):
    """
    This host's pairvm state in one call, for ``salt-run pairvm.verify``.

    One query of each kind, however many VMs there are: the ``/machines/<vm>``
    files (sha256 ``digest`` of each file's bytes, and its ``home``, ``peer``,
    ``memory``, ``state``, ``suppress``, ``bridge``, ``vnc_display`` and this
    host's ``vg``), the VMs suppressed here, DRBD (``drbd.status``, all
    resources, and from one ``drbdsetup show all``: ``drbd_auth``, which
    authenticate their peer, and ``two_primaries``, those whose running
    configuration allows two primaries), the running libvirt domains and the
    VNC listen address of each running pairvm domain, the LVs (``{"vg/lv":
    MiB}``), the volume groups (size, free, extent size), the required tools
    that are missing, and the bridges: this
    host's VM bridge, those of the VMs defined here and ``bridges`` (a list
    or comma-separated names). A query that fails is named in ``errors``
    with its message; the others are still returned. Reads only.

    CLI Example:

    .. code-block:: bash

        salt '*' pairvm.facts
        salt hostA pairvm.facts bridges=br0,br1
    """
    host = _host()
    errors = {}
    records = _facts_machines(host, errors)
    host.forget_runtime()  # fresh DRBD and LVM answers, not those of earlier in this job
    drbd = _facts_query(errors, "drbd", _facts_drbd, {})
    shown = _facts_query(errors, "drbd_show", lambda: __salt__["drbd.show"]("all"), "") if drbd else ""
    running, vnc = _facts_query(errors, "libvirt", lambda: _facts_libvirt(host, records), ([], {}))
    lvs = _facts_query(errors, "lvs", host.lvs, {})
    vgs = _facts_query(errors, "volume_groups", lambda: _volume_groups(host), {})
    if isinstance(bridges, str):
        bridges = bridges.split(",")
    wanted = {str(b).strip() for b in bridges or [] if str(b).strip()}
    wanted.add(_facts_query(errors, "view", lambda: host.setting("bridge"), "br0"))
    wanted.update(m["bridge"] for m in records.values() if isinstance(m.get("bridge"), str))
    return {
        "host": host.me,
        "machines": records,
        "suppressed": machines.suppressed(),
        "drbd": drbd,
        "drbd_auth": drbdconf.peer_auth(shown),
        "two_primaries": drbdconf.two_primaries_resources(shown),
        "running": running,
        "vnc": vnc,
        "lvs": lvs,
        "volume_groups": vgs,
        "tools_missing": [tool for tool in REQUIRED_TOOLS if not salt.utils.path.which(tool)],
        "bridges": {name: {"present": b["present"], "state": b["state"]}
                    for name, b in _bridges(wanted).items()},
        "errors": errors,
    }
