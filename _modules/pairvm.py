"""pairvm: KVM virtual machines on a pair of hosts with DRBD-replicated discs.

Host-local operations. A VM's record comes from pillar (``pairvm:vms`` plus
the master's allocations in ``pairvm:allocations``) when it is created, and
from this host's ``/machines/<vm>`` afterwards, so a host keeps working while
the master is down. The runtime (LVM, DRBD, libvirt) is queried once per
call, however many VMs there are.

Mutating functions return ``{"name", "changes": [...], "comment"}``: one line
per thing done (with ``test=True``: that would be done), often the exact
command; no changes means nothing was to do. They raise
``CommandExecutionError`` with what to do when they refuse or fail.

:depends: libvirt-python, drbd-utils, lvm2
"""

import contextlib
import fcntl
import functools
import logging
import os
import socket
import struct
import time
from xml.sax.saxutils import quoteattr

import salt.utils.files
import salt.utils.json
import salt.utils.path
import salt.utils.yaml
from salt.exceptions import CommandExecutionError, SaltInvocationError

try:
    import libvirt
    import libvirt_qemu

    HAS_LIBVIRT = True
except ImportError:
    HAS_LIBVIRT = False

log = logging.getLogger(__name__)

__virtualname__ = "pairvm"
__func_alias__ = {"list_": "list"}

MACHINES_DIR = "/machines"
GLOBAL_FILE = "_global"
DRBD_DIR = "/etc/drbd.d"
LOCK_DIR = "/run/lock/pairvm"
SUPPRESS_DIR = "/var/lib/pairvm/suppressed"
SERIAL_LOG_DIR = "/var/log/libvirt/qemu"
LIST_FIELDS = (
    "name", "memory", "disc", "running", "location", "vnc_display",
    "drbd_connection", "drbd_disk", "mac", "ip",
)
REQUIRED_TOOLS = (
    "qemu-system-x86_64", "qemu-img", "virsh", "drbdadm", "drbdsetup", "lvm",
    "ip", "bridge", "socat", "pigz", "zstd", "pv", "ssh",
)


def __virtual__():
    if not HAS_LIBVIRT:
        return (False, "pairvm: the libvirt Python binding (libvirt-python) is not installed")
    return __virtualname__


# --- configuration: pillar, /machines ------------------------------------


def _setting(key, default):
    return __salt__["config.get"](f"pairvm:{key}", default)


def _schema(func, *args):
    try:
        return __utils__[f"pairvm_schema.{func}"](*args)
    except SaltInvocationError as exc:
        raise CommandExecutionError(str(exc)) from exc


def _check_name(name):
    _schema("validate_name", name)
    return name


def _read_yaml(path):
    with salt.utils.files.fopen(path, "r") as fh:
        data = salt.utils.yaml.safe_load(fh)
    if not isinstance(data, dict):
        raise CommandExecutionError(f"{path} is not a mapping of pairvm settings")
    return data


def _machine_path(name):
    return os.path.join(MACHINES_DIR, name)


def _machines():
    """Every VM defined on this host: {name: record from /machines/<name>}."""
    if not os.path.isdir(MACHINES_DIR):
        return {}
    return {
        entry: _read_yaml(_machine_path(entry))
        for entry in sorted(os.listdir(MACHINES_DIR))
        if not entry.startswith(("_", "."))
    }


def _this_host():
    path = os.path.join(MACHINES_DIR, GLOBAL_FILE)
    return _read_yaml(path) if os.path.exists(path) else {}


def _me():
    return __grains__["id"]


def _machine(name):
    """The record of a VM defined on this host (/machines/<name>)."""
    path = _machine_path(_check_name(name))
    if not os.path.exists(path):
        raise CommandExecutionError(
            f"VM {name} is not defined on this host ({path} does not exist); "
            f"create it with salt-run pairvm.create or the pairvm.vms state"
        )
    with salt.utils.files.fopen(path, "r") as fh:
        return _schema("load_record", fh.read())


def pillar_record(name):
    """
    The record of VM ``name`` as pillar defines it now, with its allocation.

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm.pillar_record vm1
    """
    _check_name(name)
    if __pillar__.get("_errors"):
        raise CommandExecutionError(
            "the master could not render this host's pillar: " + "; ".join(map(str, __pillar__["_errors"]))
        )
    pairvm = __pillar__.get("pairvm", {})
    settings, definitions = _validated_pillar(pairvm)
    if name not in definitions:
        raise CommandExecutionError(f"VM {name} is not defined in pillar pairvm:vms")
    alloc = pairvm.get("allocations", {}).get(name)
    if not alloc:
        raise CommandExecutionError(
            f"VM {name} has no allocation yet (IP, MAC, DRBD port): run "
            f"`salt-run pairvm.allocate` (the orchestrate does) and refresh pillar"
        )
    return _schema("record", name, definitions[name], alloc, settings)


def _validated_pillar(pairvm):
    """(settings, definitions) of pillar ``pairvm``, validated once per job."""
    key = salt.utils.json.dumps(pairvm, sort_keys=True, default=str)
    cache = __context__.setdefault("pairvm.pillar", {})
    if key not in cache:
        cache.clear()
        cache[key] = (_schema("settings", pairvm), _schema("vms", pairvm))
    return cache[key]


# --- runtime queries (one per job, as Salt's pkg module does) ----------------


def _cached(key, query):
    """Query LVM or DRBD once per job; what pairvm itself changes clears it."""
    cache = __context__.setdefault("pairvm.runtime", {})
    if key not in cache:
        cache[key] = query()
    return cache[key]


def _forget_runtime():
    __context__.pop("pairvm.runtime", None)


@contextlib.contextmanager
def _libvirt():
    uri = _setting("libvirt_uri", "qemu:///system")
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise CommandExecutionError(f"cannot reach libvirt at {uri}: {exc}") from exc
    try:
        yield conn
    finally:
        conn.close()


def _domain(conn, name):
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError:
        return None


def _libvirt_running():
    """Names of the running libvirt domains (one query)."""
    with _libvirt() as conn:
        return {dom.name() for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)}


def _drbd_status(name=None):
    """DRBD state of all resources ({} for one that is down), or of one."""
    status = _cached("drbd", __salt__["drbd.status"])
    return status.get(name, {}) if name else status


def _lvs():
    """{"vg/lv": size in MiB} of every LV on this host (one query)."""
    found = _cached("lvs", lambda: __salt__["lvm.lvdisplay"](quiet=True))
    return {
        path[len("/dev/"):]: int(info["Logical Volume Size"]) // 2048
        for path, info in found.items()
    }


# --- locking and running commands -------------------------------------------


@contextlib.contextmanager
def _lock(name):
    """Serialize operations on one VM on this host."""
    os.makedirs(LOCK_DIR, exist_ok=True)
    with salt.utils.files.fopen(os.path.join(LOCK_DIR, f"{name}.lock"), "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise CommandExecutionError(
                f"another pairvm operation on {name} is running on this host; try again"
            ) from exc
        yield


class _Plan:
    """Steps of an operation: done in order, or only listed with test=True."""

    def __init__(self, name, test):
        self.name, self.test, self.changes = name, test, []
        self.saved = {}  # path: (previous content or None, mode), put back on failure

    def step(self, description, action, *args, **kwargs):
        self.changes.append(description)
        if self.test:
            return None
        try:
            return action(*args, **kwargs)
        finally:
            _forget_runtime()

    def result(self, comment):
        if self.test and self.changes:
            comment = f"would: {comment}"
        return {"name": self.name, "changes": self.changes, "comment": comment}


def _write(path, text, mode=0o644):
    """Write a file atomically (temporary name, then rename)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.pairvm-tmp"
    with salt.utils.files.fopen(tmp, "w") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    os.rename(tmp, path)


def _read(path):
    if not os.path.exists(path):
        return None
    with salt.utils.files.fopen(path, "r") as fh:
        return fh.read()


def _check_lvm(output, expected, what):
    if expected not in str(output):
        raise CommandExecutionError(f"{what} failed: {output}")


def _vg(record):
    return record["hosts"][_me()]["vg"]


def _drbd_options():
    return _setting("drbd_options", {}) or {}


def drbd_common_config():
    """
    The text of /etc/drbd.d/global_common.conf for this pair (used by the states).

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm.drbd_common_config
    """
    return __utils__["pairvm_render.drbd_global_common"](_drbd_options())


# --- create / destroy ----------------------------------------------------------


def create(name, test=False):
    """
    Create VM ``name``'s storage and configuration on this host, from pillar.

    LV ``here/<name>`` on the VM's home host or ``there/<name>`` on the peer,
    DRBD metadata, ``/etc/drbd.d/<name>.res`` (checked by ``drbdadm``; the
    pair's ``global_common.conf`` is kept beside it), the
    resource brought up as Secondary, and ``/machines/<name>``. On the home
    host a brand-new resource is made the sync source of the initial sync.
    Running it again changes nothing. On failure what this call created is
    removed again.

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm.create vm1
        salt hostA pairvm.create vm1 test=True
    """
    record = pillar_record(name)
    if _me() not in record["hosts"]:
        raise CommandExecutionError(f"this host ({_me()}) is not one of VM {name}'s pair")
    with _lock(name):
        plan = _Plan(name, test)
        try:
            _create_steps(plan, record)
        except Exception:
            if not test:
                _rollback(plan, record)
            raise
        return plan.result(f"VM {name} is present on {_me()}")


def _create_steps(plan, record):
    name, vg = record["name"], _vg(record)
    lv = f"{vg}/{name}"
    lvs = _lvs()
    new_lv = lv not in lvs
    if new_lv:
        size = f"{record['disc_mib']}M"
        plan.step(f"lvcreate -n {name} {vg} -L {size}", _lvcreate, name, vg, size)
    elif lvs[lv] < record["disc_mib"]:
        raise CommandExecutionError(
            f"LV {lv} is {lvs[lv]} MiB, smaller than VM {name}'s disc ({record['disc_mib']} MiB): "
            f"grow it with pairvm.resize"
        )
    secret = bool(_drbd_options().get("shared_secret"))  # then DRBD's files are root-only
    _write_step(plan, os.path.join(DRBD_DIR, "global_common.conf"), drbd_common_config(),
                0o600 if secret else 0o644)
    res_text = __utils__["pairvm_render.drbd_resource"](record, _drbd_options())
    _write_step(plan, os.path.join(DRBD_DIR, f"{name}.res"), res_text, 0o600, _write_resource)
    if new_lv:
        plan.step(f"drbdadm create-md --force {name}", __salt__["drbd.create_md"], name)
    if not _drbd_status(name):
        plan.step(f"drbdadm up {name}", __salt__["drbd.up"], name)
        if new_lv and record["home"] == _me():
            plan.step(f"drbdadm primary --force {name}", __salt__["drbd.primary"], name, force=True)
            plan.step(f"drbdadm secondary {name}", __salt__["drbd.secondary"], name)
    _write_step(plan, _machine_path(name), __utils__["pairvm_schema.dump_record"](record))


def _write_step(plan, path, text, mode=0o644, write=None):
    """Write a file when its content differs; a failed create puts it back."""
    previous = _read(path)
    if previous != text:
        plan.saved[path] = (previous, mode)
        plan.step(f"write {path}", write or _write, path, text, mode)


def _lvcreate(name, vg, size):
    # force: ``--yes``. A new LV may sit on the extents of a removed one and
    # start with its old signatures (a DRBD super block, a file system): real
    # lvcreate then asks whether to wipe them and, with nobody to answer,
    # refuses. The LV is new: wiping them is right.
    _check_lvm(__salt__["lvm.lvcreate"](name, vg, size=size, force=True)["Output from lvcreate"],
               "created", f"lvcreate {vg}/{name}")


def _write_resource(path, text, mode):
    """Write a resource file and have drbdadm parse it; a rejected one is put back."""
    old = _read(path)
    _write(path, text, mode)
    try:
        __salt__["drbd.check_config"]("/etc/drbd.conf")
    except CommandExecutionError as exc:
        _restore(path, old, mode)
        name = os.path.basename(path)[: -len(".res")]
        raise CommandExecutionError(f"drbdadm rejected the resource file of {name} ({path}): {exc}") from exc


def _rollback(plan, record):
    """Undo what a failed create did, newest first, keeping going on errors."""
    name, vg = record["name"], _vg(record)
    undo = {
        f"drbdadm up {name}": lambda: __salt__["drbd.down"](name),
        f"lvcreate -n {name} {vg} -L {record['disc_mib']}M": lambda: __salt__["lvm.lvremove"](name, vg),
    }
    undo.update({
        f"write {path}": functools.partial(_restore, path, previous, mode)
        for path, (previous, mode) in plan.saved.items()
    })
    for change in reversed(plan.changes):
        if change in undo:
            try:
                undo[change]()
            except Exception as exc:  # noqa: BLE001 - report and go on undoing
                log.error("pairvm: could not undo %r for %s: %s", change, name, exc)


def _restore(path, previous, mode):
    """Put a file back as it was before (absent if it did not exist)."""
    if previous is not None:
        _write(path, previous, mode=mode)
    elif os.path.exists(path):
        os.unlink(path)


def destroy(name, confirm=False, force=False, test=False):
    """
    Remove VM ``name`` from this host: domain, DRBD resource, LV, config.

    The VM's disc on this host is lost: ``confirm=True`` is required. A
    running VM is refused unless ``force=True`` (it is then powered off).

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm.destroy vm1 confirm=True
        salt hostA pairvm.destroy vm1 confirm=True force=True
    """
    _check_name(name)
    if confirm is not True:
        raise CommandExecutionError(
            f"destroying VM {name} deletes its disc on this host: pass confirm=True"
        )
    with _lock(name):
        plan = _Plan(name, test)
        with _libvirt() as conn:
            dom = _domain(conn, name)
            if dom is not None and dom.isActive():
                if not force:
                    raise CommandExecutionError(f"VM {name} is running here: stop it first, or force=True")
                plan.step(f"virsh destroy {name}", dom.destroy)
            if dom is not None:
                plan.step(f"virsh undefine {name}", dom.undefine)
        if _drbd_status(name):
            plan.step(f"drbdadm down {name}", __salt__["drbd.down"], name)
        res_path = os.path.join(DRBD_DIR, f"{name}.res")
        if os.path.exists(res_path):
            plan.step(f"rm {res_path}", os.unlink, res_path)
        for lv in sorted(lv for lv in _lvs() if lv.split("/")[1] == name and lv.split("/")[0]
                         in _setting("volume_groups", ["here", "there"])):
            vg = lv.split("/")[0]
            plan.step(f"lvremove {lv}", _lvremove, name, vg)
        for path in (_machine_path(name), os.path.join(SUPPRESS_DIR, name)):
            if os.path.exists(path):
                plan.step(f"rm {path}", os.unlink, path)
        return plan.result(f"VM {name} is absent from {_me()}")


def _lvremove(name, vg):
    _check_lvm(__salt__["lvm.lvremove"](name, vg), "successfully removed", f"lvremove {vg}/{name}")


# --- start / stop -----------------------------------------------------------


def start(name, away=False, disconnected=False, test=False):
    """
    Start VM ``name`` on this host.

    Only on its home host unless ``away=True``. DRBD must be Connected with
    the local disc UpToDate, unless ``disconnected=True`` (the local disc must
    still be UpToDate). Promotes DRBD, defines and starts the libvirt domain
    (disc on /dev/drbdN, NIC on the VM's bridge, VNC on 127.0.0.1, a serial
    console with a log), then announces the VM's IP with a gratuitous ARP.

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm.start vm1
        salt hostB pairvm.start vm1 away=True
        salt hostA pairvm.start vm1 disconnected=True
    """
    record = _machine(name)
    with _lock(name):
        plan = _Plan(name, test)
        with _libvirt() as conn:
            dom = _domain(conn, name)
            if dom is not None and dom.isActive():
                return plan.result(f"VM {name} is already running on {_me()}")
            _check_may_start(record, away, disconnected)
            promote = _drbd_status(name).get("role") != "Primary"
            if promote:
                plan.step(f"drbdadm primary {name}", __salt__["drbd.primary"], name)
            xml = __utils__["pairvm_render.domain_xml"](record, SERIAL_LOG_DIR)
            if dom is not None:  # redefine with the record's current settings, same UUID
                xml = xml.replace("</name>", f"</name><uuid>{dom.UUIDString()}</uuid>", 1)
            try:
                plan.step(f"virsh define <domain {name}> && virsh start {name}", _define_and_start, conn, xml)
            except libvirt.libvirtError as exc:
                if promote:
                    __salt__["drbd.secondary"](name)
                raise CommandExecutionError(f"libvirt could not start VM {name}: {exc}") from exc
        plan.step(f"gratuitous ARP for {record['ip']} ({record['mac']}) on {record['bridge']}",
                  _announce, record)
        return plan.result(f"VM {name} is running on {_me()}")


def _check_may_start(record, away, disconnected):
    name = record["name"]
    if record["home"] != _me() and not away:
        raise CommandExecutionError(
            f"VM {name}'s home is {record['home']}, not {_me()}: pass away=True to run it here"
        )
    drbd = _drbd_status(name)
    if not drbd:
        raise CommandExecutionError(f"DRBD resource {name} is not up on {_me()}: run pairvm.autostart")
    if drbd.get("split_brain"):
        raise CommandExecutionError(
            f"DRBD resource {name} is StandAlone after a split brain: both hosts wrote to the disc. "
            f"Choose the side whose changes to discard and run `pairvm split_brain_victim {name}` there"
        )
    if drbd.get("peer_role") == "Primary":
        raise CommandExecutionError(f"VM {name}'s disc is Primary on the peer: stop it there first")
    if drbd.get("disk") != "UpToDate":
        raise CommandExecutionError(
            f"VM {name}'s disc on {_me()} is {drbd.get('disk')}, not UpToDate: wait for the sync to finish"
        )
    if drbd.get("connection") != "Connected" and not disconnected:
        raise CommandExecutionError(
            f"DRBD resource {name} is {drbd.get('connection')}, not Connected: the peer would not "
            f"receive the VM's writes. Pass disconnected=True to start it anyway"
        )


def _define_and_start(conn, xml):
    conn.defineXML(xml).create()


def _announce(record):
    """Gratuitous ARP for the VM's IP from its MAC, as the old tool did after a
    start or a move, so switches and neighbours learn where it is now.

    Sent from the host on the VM's behalf (iputils arping cannot: it binds the
    source address, which is the VM's, not the host's). A failure is logged:
    the VM runs anyway.
    """
    mac = bytes.fromhex(record["mac"].replace(":", ""))
    ip = socket.inet_aton(record["ip"])
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + ip + bytes(6) + ip
    try:
        _send_frame(record["bridge"], b"\xff" * 6 + mac + b"\x08\x06" + arp)
    except OSError as exc:
        log.warning("pairvm: gratuitous ARP for %s on %s failed: %s", record["ip"], record["bridge"], exc)


def _send_frame(interface, frame):
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((interface, 0))
        sock.send(frame)


def stop(name, graceful=False, timeout=60, test=False):
    """
    Stop VM ``name`` on this host, then demote its DRBD resource to Secondary.

    By default it is powered off at once; ``graceful=True`` sends an ACPI
    shutdown and waits up to ``timeout`` seconds, then fails (the VM keeps
    running) if the guest did not stop.

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm.stop vm1
        salt hostA pairvm.stop vm1 graceful=True timeout=120
    """
    _check_name(name)
    with _lock(name):
        plan = _Plan(name, test)
        with _libvirt() as conn:
            dom = _domain(conn, name)
            if dom is not None and dom.isActive():
                if graceful:
                    plan.step(f"virsh shutdown {name} (wait {timeout}s)", _shutdown, dom, name, timeout)
                else:
                    plan.step(f"virsh destroy {name}", dom.destroy)
        if _drbd_status(name).get("role") == "Primary":
            plan.step(f"drbdadm secondary {name}", __salt__["drbd.secondary"], name)
        return plan.result(f"VM {name} is stopped on {_me()}")


def _shutdown(dom, name, timeout):
    dom.shutdown()
    deadline = time.monotonic() + float(timeout)
    while time.monotonic() < deadline:
        if not dom.isActive():
            return
        time.sleep(0.5)
    raise CommandExecutionError(
        f"VM {name} did not shut down within {timeout}s (is acpid running in the guest?); "
        f"it is still running: stop it without graceful to power it off"
    )


# --- list ------------------------------------------------------------------------


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
    machines = _machines()
    view = _this_host()
    me = view.get("me", _me())
    running = _libvirt_running() if machines else set()
    drbd = _drbd_status() if machines else {}
    rows = [_row(name, conf, running, drbd, me) for name, conf in machines.items()]
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
        raise CommandExecutionError(
            f"unknown list field(s) {', '.join(map(str, unknown)) or '(none given)'}; "
            f"choose from {', '.join(LIST_FIELDS)}"
        )
    return ["name"] + [f for f in fields if f != "name"]


# --- running VMs: cdrom, serial, monitor, resize ---------------------------------


def cdrom(name, iso=None, eject=False):
    """
    Show, insert or eject VM ``name``'s CD, on a running VM without a restart.

    The change lasts until the VM stops; set ``cdrom`` in pillar to keep one.

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm.cdrom vm1
        salt hostA pairvm.cdrom vm1 iso=/srv/iso/debian.iso
        salt hostA pairvm.cdrom vm1 eject=True
    """
    _machine(name)
    if iso is not None and (not os.path.isabs(iso) or ".." in iso.split("/")):
        raise CommandExecutionError(f"cdrom: {iso!r} is not an absolute path without '..'")
    if iso is not None and not os.path.isfile(iso):
        raise CommandExecutionError(f"cdrom: {iso} does not exist on {_me()}")
    with _lock(name), _libvirt() as conn:
        dom = _domain(conn, name)
        if dom is None or not dom.isActive():
            raise CommandExecutionError(f"VM {name} is not running on {_me()}")
        current = __utils__["pairvm_render.domain_summary"](dom.XMLDesc(0))["cdrom"]
        if iso is None and not eject:
            return {"name": name, "cdrom": current, "changes": [], "comment": ""}
        target = None if eject else iso
        if target == current:
            return {"name": name, "cdrom": current, "changes": [], "comment": "already so"}
        source = f"<source file={quoteattr(target)}/>" if target else ""
        xml = (f"<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>{source}"
               f"<target dev='hdc' bus='ide'/><readonly/></disk>")
        dom.updateDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        change = f"virsh change-media {name} hdc " + (f"--insert {target}" if target else "--eject")
        return {"name": name, "cdrom": target, "changes": [change], "comment": ""}


def serial(name, lines=50):
    """
    The last ``lines`` lines of VM ``name``'s serial console log on this host.

    (The host command ``pairvm serial NAME`` attaches to the console instead.)

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm.serial vm1 lines=20
    """
    _machine(name)
    try:
        lines = int(lines)
    except (TypeError, ValueError):
        lines = 0
    if lines < 1:
        raise CommandExecutionError("serial: lines must be a whole number of 1 or more")
    path = os.path.join(SERIAL_LOG_DIR, f"{name}-serial.log")
    text = _read(path)
    if text is None:
        raise CommandExecutionError(f"VM {name} has no serial log on {_me()} ({path}): has it run here?")
    return "\n".join(text.splitlines()[-lines:])


def monitor(name, command):
    """
    Pass a QEMU monitor (HMP) command to running VM ``name`` through libvirt.

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm.monitor vm1 'info status'
    """
    _machine(name)
    with _libvirt() as conn:
        dom = _domain(conn, name)
        if dom is None or not dom.isActive():
            raise CommandExecutionError(f"VM {name} is not running on {_me()}")
        try:
            return libvirt_qemu.qemuMonitorCommand(
                dom, str(command), libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP
            ).strip()
        except libvirt.libvirtError as exc:
            raise CommandExecutionError(f"monitor command failed: {exc}") from exc


def resize(name, size, test=False):
    """
    Grow VM ``name``'s LV on this host to ``size`` (e.g. ``20G``); never shrink.

    On the VM's home host, DRBD is then told to use the new size (run it on
    the peer first, or use ``salt-run pairvm.resize`` which does both hosts
    in order).

    CLI Example:

    .. code-block:: bash

        salt hostB pairvm.resize vm1 20G
        salt hostA pairvm.resize vm1 20G
    """
    record = _machine(name)
    new_mib = _schema("parse_size_mib", size)
    lv = f"{_vg(record)}/{name}"
    with _lock(name):
        plan = _Plan(name, test)
        current = _lvs().get(lv)
        if current is None:
            raise CommandExecutionError(f"LV {lv} does not exist on {_me()}")
        if new_mib < current:
            raise CommandExecutionError(
                f"VM {name}'s disc is {current} MiB; shrinking it to {new_mib} MiB would cut off data: "
                f"pairvm only grows discs"
            )
        if not _drbd_status(name):
            # DRBD 8.4 keeps its metadata at the end of the LV: it must be
            # attached while the LV grows, to move the metadata along.
            raise CommandExecutionError(
                f"DRBD resource {name} is not up on {_me()}: bring it up (pairvm autostart) before resizing"
            )
        if new_mib > current:
            plan.step(f"lvextend -L {new_mib}M /dev/{lv}", _lvextend, lv, new_mib)
        if record["home"] == _me() and _drbd_mib(record) < new_mib - _drbd_metadata_mib(new_mib):
            _drbd_resize_steps(plan, name)
        return plan.result(f"VM {name}'s disc on {_me()} is {new_mib} MiB")


def _drbd_resize_steps(plan, name):
    """DRBD 8.4 resizes only with a Primary: a stopped VM's home is promoted for it."""
    state = _drbd_status(name)
    promote = "Primary" not in (state.get("role"), state.get("peer_role"))
    if promote:
        plan.step(f"drbdadm primary {name}", __salt__["drbd.primary"], name)
    plan.step(f"drbdadm resize {name}", __salt__["drbd.resize"], name)
    if promote:
        plan.step(f"drbdadm secondary {name}", __salt__["drbd.secondary"], name)


def _lvextend(lv, mib):
    out = __salt__["lvm.lvextend"](size=f"{mib}M", lvpath=f"/dev/{lv}")
    _check_lvm(out.get("Output from lvextend"), "successfully extended", f"lvextend {lv}")


def _drbd_metadata_mib(disc_mib):
    """Upper bound of DRBD 8.4's internal metadata on a disc, in whole MiB:
    a bitmap bit per 4 KiB, a 32 KiB activity log, a 4 KiB superblock."""
    return -(-(disc_mib * 32 + 36 * 1024) // 2**20) + 1


def _drbd_mib(record):
    """Size of the DRBD device (what the VM sees), in MiB; 0 when it is not up."""
    res = __salt__["cmd.run_all"](
        ["blockdev", "--getsize64", f"/dev/drbd{record['drbd_minor']}"],
        python_shell=False, ignore_retcode=True,
    )
    return int(res["stdout"]) // 2**20 if res["retcode"] == 0 else 0


# --- split brain ------------------------------------------------------------------


def split_brain_victim(name, snapshot_size=None, snapshot=True, test=False):
    """
    Resolve a DRBD split brain of VM ``name`` by discarding THIS host's changes.

    Run it on the host whose writes since the split are to be dropped (the
    other host's data survives). Refused unless DRBD reports a split brain
    here (StandAlone, marked by the kernel's split-brain handler), and while
    the VM runs on this host. First keeps this host's data: an LVM snapshot
    ``<vg>/<name>-sb-<UTC time>`` of the backing LV, ``snapshot_size`` (e.g.
    ``2G``; default the disc's full size, so it can never overflow) unless
    ``snapshot=False`` is passed explicitly. Then demotes the resource if
    needed and connects it with ``--discard-my-data``; the resync from the
    peer starts when the peer connects too (``drbdadm connect NAME`` there;
    ``salt-run pairvm.split_brain_victim NAME HOST`` does both hosts).

    CLI Example:

    .. code-block:: bash

        salt hostB pairvm.split_brain_victim vm1
        salt hostB pairvm.split_brain_victim vm1 snapshot_size=2G
        salt hostB pairvm.split_brain_victim vm1 snapshot=False
        salt hostB pairvm.split_brain_victim vm1 test=True
    """
    record = _machine(name)
    if snapshot not in (True, False):
        raise CommandExecutionError(f"snapshot must be True or False, not {snapshot!r}")
    if not snapshot and snapshot_size is not None:
        raise CommandExecutionError("snapshot_size was given with snapshot=False: pass one or the other")
    vg = _vg(record)
    with _lock(name):
        plan = _Plan(name, test)
        _check_victim(record)
        if snapshot:
            disc_mib = _lvs().get(f"{vg}/{name}")
            if disc_mib is None:
                raise CommandExecutionError(f"LV {vg}/{name} does not exist on {_me()}: nothing to keep")
            mib = disc_mib if snapshot_size is None else _schema("parse_size_mib", snapshot_size, 1)
            snap = f"{name}-sb-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}"
            plan.step(f"lvcreate -s -n {snap} -L {mib}M {vg}/{name}", _snapshot, snap, vg, name, mib)
        if _drbd_status(name).get("role") == "Primary":
            plan.step(f"drbdadm secondary {name}", __salt__["drbd.secondary"], name)
        plan.step(f"drbdadm connect --discard-my-data {name}", __salt__["drbd.connect"], name,
                  discard_my_data=True)
        kept = f"this host's data is kept in LV {vg}/{snap}; " if snapshot else ""
        other = _other_host(record)
        return plan.result(
            f"VM {name}'s changes on {_me()} are discarded: {kept}it resyncs from {other} "
            f"once {other} connects (there: drbdadm connect {name}, if it is StandAlone)"
        )


def _other_host(record):
    return record["peer"] if record["home"] == _me() else record["home"]


def _check_victim(record):
    name = record["name"]
    with _libvirt() as conn:
        dom = _domain(conn, name)
        if dom is not None and dom.isActive():
            raise CommandExecutionError(
                f"VM {name} is running on {_me()}: this host's disc is in use. Stop it first if this "
                f"host's changes are the ones to discard, or run split_brain_victim on {_other_host(record)}"
            )
    drbd = _drbd_status(name)
    if not drbd:
        raise CommandExecutionError(f"DRBD resource {name} is not up on {_me()}: nothing to resolve")
    if not drbd.get("split_brain"):
        raise CommandExecutionError(
            f"DRBD resource {name} on {_me()} is {drbd.get('connection')} with its disc "
            f"{drbd.get('disk')}, not in split brain: nothing is discarded. If it is StandAlone after a "
            f"disconnect, connect it (drbdadm connect {name}); DRBD reports a split brain if there is one"
        )


def _snapshot(snap, vg, origin, mib):
    out = __salt__["lvm.lvcreate"](snap, vg, size=f"{mib}M", snapshot=origin)
    _check_lvm(out.get("Output from lvcreate") if isinstance(out, dict) else out, "created",
               f"snapshot of {vg}/{origin}")


# --- autostart, suppress, ssh forwards ---------------------------------------------


def suppress(name, on=True):
    """
    Keep VM ``name`` from being started by ``autostart`` on this host (or not).

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm.suppress vm1
        salt hostA pairvm.suppress vm1 on=False
    """
    _machine(name)
    path = os.path.join(SUPPRESS_DIR, name)
    if bool(on) == os.path.exists(path):
        return {"name": name, "changes": [], "comment": f"suppress is already {'on' if on else 'off'}"}
    if on:
        os.makedirs(SUPPRESS_DIR, exist_ok=True)
        _write(path, "suppressed from autostart by pairvm suppress\n")
        return {"name": name, "changes": [f"touch {path}"], "comment": "suppressed from autostart"}
    os.unlink(path)
    return {"name": name, "changes": [f"rm {path}"], "comment": "autostart allowed again"}


def autostart(test=False, connect_timeout=30):
    """
    Bring every VM of this host up after a boot.

    DRBD resources of all VMs come up (as Secondary); every VM homed here that
    should run, is not suppressed (pillar ``suppress`` or ``pairvm.suppress``)
    and is not running is started; a resource brought up here is given up to
    ``connect_timeout`` seconds to connect first (``start`` refuses a
    disconnected VM: start it with ``disconnected=True`` if the peer is gone).
    Returns one result per VM; the retcode is non-zero if one did not start.

    CLI Example:

    .. code-block:: bash

        salt '*' pairvm.autostart
    """
    results = {}
    machines = _machines()
    drbd = _drbd_status() if machines else {}
    running = _libvirt_running() if machines else set()
    for name, record in machines.items():
        changes = []
        if name not in drbd:
            changes.append(f"drbdadm up {name}")
            if not test:
                __salt__["drbd.up"](name)
                _forget_runtime()
        results[name] = {"changes": changes, "comment": "ok"}
        if not _wants_autostart(name, record) or name in running:
            continue
        if test:
            _plan_autostart(name, name in drbd, results[name])
            continue
        try:
            if name not in drbd:  # just brought up: give it time to connect
                _wait_for_connection(name, connect_timeout)
            changes += start(name)["changes"]
        except CommandExecutionError as exc:
            results[name]["comment"] = f"not started: {exc}"
            __context__["retcode"] = 1
    return results


def _plan_autostart(name, resource_up, result):
    """test=True: the start's own commands, or, for a resource that autostart
    brings up first, that it would start once DRBD has connected."""
    if not resource_up:
        result["changes"].append(f"pairvm start {name} (once DRBD is Connected)")
        return
    try:
        result["changes"] += start(name, test=True)["changes"]
    except CommandExecutionError as exc:
        result["comment"] = f"not started: {exc}"


def _wants_autostart(name, record):
    return (record.get("home") == _me() and record.get("state") == "running"
            and not record.get("suppress") and not os.path.exists(os.path.join(SUPPRESS_DIR, name)))


def _wait_for_connection(name, timeout):
    deadline = time.monotonic() + float(timeout)
    while _drbd_status(name).get("connection") != "Connected" and time.monotonic() < deadline:
        time.sleep(0.5)
        _forget_runtime()


def print_ssh_forwards():
    """
    SSH port forwards that reach the VNC consoles of the VMs running here.

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm.print_ssh_forwards
    """
    running = _libvirt_running()
    me = _this_host()
    lines = [
        f"ssh -N -L {5900 + r['vnc_display']}:127.0.0.1:{5900 + r['vnc_display']} "
        f"root@{me.get('here_ip', _me())}  # {name}"
        for name, r in _machines().items()
        if name in running and r.get("vnc_display") is not None
    ]
    return "\n".join(lines) if lines else "no VM is running on this host"


# --- health check ------------------------------------------------------------------


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


# --- facts: this host's whole state in one call, for salt-run pairvm.verify ------------


SYS_CLASS_NET = "/sys/class/net"


def _is_ifname(name):
    """An interface name: 1-15 ASCII letters, digits, ``_.-``, not starting with ``-`` or ``.``."""
    return (isinstance(name, str) and 0 < len(name) <= 15 and name.isascii() and name[0].isalnum()
            and all(c.isalnum() or c in "_.-" for c in name))


def _facts_machines(errors):
    """{name: summary} of every /machines/<vm> file: digest of its bytes, the fields verify uses."""
    if not os.path.isdir(MACHINES_DIR):
        return {}
    me, found = _me(), {}
    for entry in sorted(os.listdir(MACHINES_DIR)):
        if entry.startswith(("_", ".")):
            continue
        try:
            with salt.utils.files.fopen(_machine_path(entry), "rb") as fh:
                data = fh.read()
        except OSError as exc:
            errors[f"machines/{entry}"] = f"cannot read {_machine_path(entry)}: {exc}"
            continue
        summary = {"digest": __utils__["pairvm_render.machines_digest"](data)}
        try:
            record = salt.utils.yaml.safe_load(data.decode("utf-8"))
        except (ValueError, salt.utils.yaml.YAMLError) as exc:  # reported, not fatal
            record, summary["error"] = None, f"not valid YAML: {exc}"
        if not isinstance(record, dict):
            summary.setdefault("error", "not a mapping of VM settings")
            record = {}
        hosts = record.get("hosts") if isinstance(record.get("hosts"), dict) else {}
        mine = hosts.get(me) if isinstance(hosts.get(me), dict) else {}
        summary.update({key: record.get(key) for key in ("home", "peer", "memory", "state", "suppress",
                                                        "bridge", "vnc_display")})
        summary["vg"] = mine.get("vg")
        found[entry] = summary
    return found


def _facts_query(errors, key, query, default):
    """Run one query; a failure is noted in ``errors[key]`` and gives ``default``."""
    try:
        return query()
    except (CommandExecutionError, SaltInvocationError, OSError, ValueError) as exc:
        errors[key] = str(exc)
    except (KeyError, IndexError, TypeError) as exc:
        errors[key] = f"unexpected answer: {type(exc).__name__}: {exc}"
    return default


def _facts_drbd():
    if "drbd.status" not in __salt__:
        raise CommandExecutionError("the drbd execution module is not available here (drbd-utils missing?)")
    return __salt__["drbd.status"]()


def _facts_libvirt(machines):
    """(running domain names, {running pairvm domain: VNC listen address}), one connection."""
    with _libvirt() as conn:
        try:
            active = {dom.name(): dom for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)}
        except libvirt.libvirtError as exc:
            raise CommandExecutionError(f"libvirt: cannot list the running domains: {exc}") from exc
        vnc = {}
        for name in sorted(set(active) & set(machines)):
            try:
                xml = active[name].XMLDesc(0)
            except libvirt.libvirtError:  # stopped since it was listed
                continue
            vnc[name] = __utils__["pairvm_render.domain_summary"](xml)["vnc_listen"]
    return sorted(active), vnc


def _facts_volume_groups():
    """{vg: {"size", "free"}} of this host (one ``vgs`` call)."""
    res = __salt__["cmd.run_all"](
        ["vgs", "--reportformat", "json", "-o", "vg_name,vg_size,vg_free", "--units", "m"],
        python_shell=False, ignore_retcode=True,
    )
    if res["retcode"] != 0:
        raise CommandExecutionError(f"vgs failed: {res['stderr'].strip()}")
    report = salt.utils.json.loads(res["stdout"])["report"][0]["vg"]
    return {vg["vg_name"]: {"size": vg.get("vg_size"), "free": vg.get("vg_free")} for vg in report}


def _facts_bridges(names):
    """{bridge: {"present": bool, "state": operstate or None}} from /sys/class/net."""
    found = {}
    for name in sorted(names):
        present = _is_ifname(name) and os.path.isdir(os.path.join(SYS_CLASS_NET, name, "bridge"))
        state = None
        if present:
            try:
                with salt.utils.files.fopen(os.path.join(SYS_CLASS_NET, name, "operstate")) as fh:
                    state = fh.read().strip()
            except OSError:
                state = None
        found[name] = {"present": present, "state": state}
    return found


def facts(bridges=None):
    """
    This host's pairvm state in one call, for ``salt-run pairvm.verify``.

    One query of each kind, however many VMs there are: the ``/machines/<vm>``
    files (sha256 ``digest`` of each file's bytes, and its ``home``, ``peer``,
    ``memory``, ``state``, ``suppress``, ``bridge``, ``vnc_display`` and this
    host's ``vg``), the VMs suppressed here, DRBD (``drbd.status``, all
    resources), the running libvirt domains and the VNC listen address of
    each running pairvm domain, the LVs (``{"vg/lv": MiB}``), the volume
    groups, the required tools that are missing, and the bridges: the
    default ``pairvm:bridge``, those of the VMs defined here and ``bridges``
    (a list or comma-separated names). A query that fails is named in
    ``errors`` with its message; the others are still returned. Reads only.

    CLI Example:

    .. code-block:: bash

        salt '*' pairvm.facts
        salt hostA pairvm.facts bridges=br0,br1
    """
    errors = {}
    machines = _facts_machines(errors)
    _forget_runtime()  # fresh DRBD and LVM answers, not those of earlier in this job
    drbd = _facts_query(errors, "drbd", _facts_drbd, {})
    running, vnc = _facts_query(errors, "libvirt", lambda: _facts_libvirt(machines), ([], {}))
    lvs = _facts_query(errors, "lvs", _lvs, {})
    vgs = _facts_query(errors, "volume_groups", _facts_volume_groups, {})
    if isinstance(bridges, str):
        bridges = bridges.split(",")
    wanted = {str(b).strip() for b in bridges or [] if str(b).strip()}
    wanted.add(_setting("bridge", "br0"))
    wanted.update(m["bridge"] for m in machines.values() if isinstance(m.get("bridge"), str))
    suppressed = sorted(os.listdir(SUPPRESS_DIR)) if os.path.isdir(SUPPRESS_DIR) else []
    return {
        "host": _me(),
        "machines": machines,
        "suppressed": suppressed,
        "drbd": drbd,
        "running": running,
        "vnc": vnc,
        "lvs": lvs,
        "volume_groups": vgs,
        "tools_missing": [tool for tool in REQUIRED_TOOLS if not salt.utils.path.which(tool)],
        "bridges": _facts_bridges(wanted),
        "errors": errors,
    }
