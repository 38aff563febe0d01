"""pairvm: KVM virtual machines on a pair of hosts with DRBD-replicated discs.

Host-local operations. They read this host's realized configuration
(``/machines/<vm>`` and ``/machines/_global``, written from pillar by the
formula's states) and query the runtime (LVM, DRBD, libvirt) once per call,
however many VMs there are.

:depends: libvirt-python, drbd-utils, lvm2
:configuration: optional minion/pillar keys ``pairvm:libvirt_uri`` (default
    ``qemu:///system``), ``pairvm:bridge`` (default ``br0``) and
    ``pairvm:volume_groups`` (default ``[here, there]``).
"""

import logging
import os

import salt.utils.files
import salt.utils.json
import salt.utils.path
import salt.utils.yaml
from salt.exceptions import CommandExecutionError

try:
    import libvirt

    HAS_LIBVIRT = True
except ImportError:
    HAS_LIBVIRT = False

log = logging.getLogger(__name__)

__virtualname__ = "pairvm"
__func_alias__ = {"list_": "list"}

MACHINES_DIR = "/machines"
GLOBAL_FILE = "_global"
LIST_FIELDS = (
    "name", "memory", "disc", "running", "location", "vnc_display",
    "drbd_connection", "drbd_disk", "mac", "ip",
)
REQUIRED_TOOLS = (
    "qemu-system-x86_64", "qemu-img", "virsh", "drbdadm", "drbdsetup", "lvm",
    "ip", "bridge", "arping", "socat", "pigz", "zstd", "pv", "ssh",
)


def __virtual__():
    if not HAS_LIBVIRT:
        return (False, "pairvm: the libvirt Python binding (libvirt-python) is not installed")
    return __virtualname__


def _setting(key, default):
    return __salt__["config.get"](f"pairvm:{key}", default)


def _read_yaml(path):
    with salt.utils.files.fopen(path, "r") as fh:
        data = salt.utils.yaml.safe_load(fh)
    if not isinstance(data, dict):
        raise CommandExecutionError(f"{path} is not a mapping of pairvm settings")
    return data


def _machines():
    """Every VM defined on this host: {name: settings from /machines/<name>}."""
    if not os.path.isdir(MACHINES_DIR):
        return {}
    return {
        entry: _read_yaml(os.path.join(MACHINES_DIR, entry))
        for entry in sorted(os.listdir(MACHINES_DIR))
        if not entry.startswith(("_", "."))
    }


def _this_host():
    path = os.path.join(MACHINES_DIR, GLOBAL_FILE)
    return _read_yaml(path) if os.path.exists(path) else {}


def _libvirt_running():
    """Names of the running libvirt domains (one query)."""
    uri = _setting("libvirt_uri", "qemu:///system")
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise CommandExecutionError(f"cannot reach libvirt at {uri}: {exc}") from exc
    try:
        return {dom.name() for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)}
    finally:
        conn.close()


def _drbd_status():
    if "drbd.status" not in __salt__:
        return {}
    return __salt__["drbd.status"]()


def _row(name, conf, running, drbd, me):
    home = conf.get("home")
    return {
        "name": name,
        "memory": conf.get("memory"),
        "disc": conf.get("disc"),
        "running": name in running,
        "location": "home" if home == me else "away",
        "vnc_display": conf.get("vnc_display"),
        "drbd_connection": drbd.get(name, {}).get("connection", "Unconfigured"),
        "drbd_disk": drbd.get(name, {}).get("disk", "Unconfigured"),
        "mac": conf.get("mac"),
        "ip": conf.get("ip"),
    }


def list_(fields=None):
    """
    List the VMs this host knows, with their runtime state.

    Returns ``{"vms": [row, ...], "memory": {...}}``. Each row has name,
    memory (MiB), disc, running, location (``home`` or ``away`` as seen from
    this host), VNC display, DRBD connection and disc state, MAC and IP.
    ``memory`` totals the RAM (MiB) of the VMs homed here, of those homed on
    the peer, and of those running on this host, with the pair's cap. ``fields`` (a comma-separated list or a
    list, like the old ``pairvm list param``) keeps only those columns.

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm.list
        salt hostA pairvm.list fields=name,ip
    """
    wanted = _parse_fields(fields)
    machines = _machines()
    me = _this_host().get("me", __grains__.get("id"))
    running = _libvirt_running() if machines else set()
    drbd = _drbd_status() if machines else {}
    rows = [_row(name, conf, running, drbd, me) for name, conf in machines.items()]
    memory = {
        "here": sum(r["memory"] or 0 for r in rows if r["location"] == "home"),
        "there": sum(r["memory"] or 0 for r in rows if r["location"] == "away"),
        "running": sum(r["memory"] or 0 for r in rows if r["running"]),
        "cap": _this_host().get("memory_cap"),
    }
    return {"vms": [{k: r[k] for k in wanted} for r in rows], "memory": memory}


def _parse_fields(fields):
    if fields is None:
        return LIST_FIELDS
    if isinstance(fields, str):
        fields = [f.strip() for f in fields.split(",") if f.strip()]
    unknown = [f for f in fields if f not in LIST_FIELDS]
    if unknown or not fields:
        raise CommandExecutionError(
            f"unknown list field(s) {', '.join(map(str, unknown)) or '(none given)'}; "
            f"choose from {', '.join(LIST_FIELDS)}"
        )
    return ["name"] + [f for f in fields if f != "name"]


def _check_tools():
    missing = [tool for tool in REQUIRED_TOOLS if not salt.utils.path.which(tool)]
    return not missing, "all present" if not missing else "missing: " + ", ".join(missing)


def _check_volume_groups():
    wanted = _setting("volume_groups", ["here", "there"])
    res = __salt__["cmd.run_all"](
        ["vgs", "--reportformat", "json", "-o", "vg_name,vg_size,vg_free", "--units", "m"],
        python_shell=False,
    )
    if res["retcode"] != 0:
        return False, f"vgs failed: {res['stderr'].strip()}"
    report = salt.utils.json.loads(res["stdout"])["report"][0]["vg"]
    found = {vg["vg_name"]: vg for vg in report}
    missing = [vg for vg in wanted if vg not in found]
    if missing:
        return False, "missing volume group(s): " + ", ".join(missing)
    return True, ", ".join(f"{vg} {found[vg]['vg_free']} free of {found[vg]['vg_size']}" for vg in wanted)


def _check_bridge():
    bridge = _setting("bridge", "br0")
    if not os.path.isdir(f"/sys/class/net/{bridge}/bridge"):
        return False, f"bridge {bridge} does not exist"
    with salt.utils.files.fopen(f"/sys/class/net/{bridge}/operstate") as fh:
        state = fh.read().strip()
    return state in ("up", "unknown"), f"bridge {bridge} is {state}"


def _check_libvirt():
    uri = _setting("libvirt_uri", "qemu:///system")
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        return False, f"cannot reach libvirt at {uri}: {exc.get_error_message()}"
    try:
        version = conn.getLibVersion()
    finally:
        conn.close()
    return True, f"{uri} answers (libvirt {version // 1000000}.{version // 1000 % 1000}.{version % 1000})"


def check_system():
    """
    Check that this host can run pairvm VMs (the old ``check_system``).

    Checks the required tools, the volume groups ``here`` and ``there``, the
    VM bridge, and that libvirt answers. Returns ``{"ok": bool, "checks":
    {name: {"ok": bool, "detail": str}}}``; the job's retcode is non-zero when
    a check fails.

    CLI Example:

    .. code-block:: bash

        salt '*' pairvm.check_system
    """
    checks = {}
    for name, check in (
        ("tools", _check_tools),
        ("volume_groups", _check_volume_groups),
        ("bridge", _check_bridge),
        ("libvirt", _check_libvirt),
    ):
        ok, detail = check()
        checks[name] = {"ok": ok, "detail": detail}
    healthy = all(c["ok"] for c in checks.values())
    if not healthy:
        __context__["retcode"] = 1
    return {"ok": healthy, "checks": checks}
