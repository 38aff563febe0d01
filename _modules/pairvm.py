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
import contextvars
import fcntl
import functools
import hashlib
import logging
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
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
PIPE_BYTES = 1 << 20
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


# The host command shows stderr lines after this prefix as progress (files/pairvm).
PROGRESS_PREFIX = "pairvm progress: "


def _progress(operation, name, figures):
    """Report a long operation's figures (bytes, total, percent, rate, eta).

    As event ``pairvm/<operation>/<name>/progress`` (the master's bus under a
    minion, the local bus under ``salt-call --local``) and, under salt-call,
    as a line on stderr for the terminal.
    """
    data = dict(figures, operation=operation, name=name)
    try:
        __salt__["event.send"](f"pairvm/{operation}/{name}/progress", data)
    except Exception as exc:  # pylint: disable=broad-except
        log.debug("pairvm: progress event not sent: %s", exc)
    if __opts__.get("__cli") == "salt-call":
        text = __utils__["pairvm_progress.line"](operation, name, figures)
        sys.stderr.write(f"{PROGRESS_PREFIX}{text}\n")
        sys.stderr.flush()


def _reporter(operation, name, total, **extra):
    """A function ``report(done, final=False)`` that reports ``operation``'s progress
    (``_progress``, with ``extra`` such as ``phase`` in the event) at most once a
    second, and always the final count; it returns the figures it reported, or None."""
    meter = __utils__["pairvm_progress.meter"](total, time.monotonic())

    def report(done, final=False):
        figures = meter.update(done, time.monotonic(), final=final)
        if figures is not None:
            _progress(operation, name, dict(figures, **extra))
        return figures

    return report


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
        seed = os.path.join(SEED_DIR, f"{name}.iso")
        for path in (_machine_path(name), os.path.join(SUPPRESS_DIR, name), seed):
            if os.path.exists(path):
                plan.step(f"rm {path}", os.unlink, path)
        return plan.result(f"VM {name} is absent from {_me()}")


def _lvcreate_snapshot(snap, vg, origin, size):
    """Snapshot ``vg/origin`` as ``vg/snap`` (split-brain victim, backup) through Salt's
    lvm module; ``size`` is ``{"size": "2G"}`` or ``{"extents": "20%ORIGIN"}``."""
    out = __salt__["lvm.lvcreate"](snap, vg, snapshot=origin, **size)
    _check_lvm(out.get("Output from lvcreate") if isinstance(out, dict) else out, "created",
               f"snapshot of {vg}/{origin}")


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
            seed = _seed(name)
            if seed:  # left by pairvm.image: the guest's first boot reads it
                record = dict(record, cdrom=seed)
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
    A seed CD left by ``pairvm.image`` is attached at every start until it is
    ejected here: ejecting it also deletes the seed.

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
        changes = [f"virsh change-media {name} hdc " + (f"--insert {target}" if target else "--eject")]
        seed = _seed(name)
        if eject and seed and current == seed:  # the seed of pairvm.image is not wanted any more
            os.unlink(seed)
            changes.append(f"rm {seed}")
        return {"name": name, "cdrom": target, "changes": changes, "comment": ""}


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
            plan.step(f"lvcreate -s -n {snap} -L {mib}M {vg}/{name}",
                      _lvcreate_snapshot, snap, vg, name, {"size": f"{mib}M"})
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


# --- backups: backup, restore, verify_backup ---------------------------------------------


def _bk(func):
    return __utils__[f"pairvm_backup.{func}"]


def _backup_settings(**overrides):
    """Pillar pairvm:backup (else /machines/_global's copy) with defaults, then the
    call's own non-None arguments."""
    raw = _setting("backup", None)
    if raw is None:  # no master: the copy of pairvm.config in /machines/_global, flat keys
        raw = {key[len("backup_"):]: value
               for key, value in _this_host().items() if key.startswith("backup_")}
    settings = _schema("backup_settings", raw)
    given = {key: value for key, value in overrides.items() if value is not None}
    if given:
        settings = _schema("backup_settings", {**settings, **given, "schedule": {}})
    return settings


@contextlib.contextmanager
def _sigterm_interrupts():
    """Under salt-call, SIGTERM would end the process without clean-up: make it
    raise, so the snapshot and the partial file are removed. (A minion's job
    process already turns SIGTERM into SystemExit.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupted(signum, frame):
        raise CommandExecutionError(f"interrupted by signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Pipeline:
    """Processes of one transfer; ``close`` kills what still runs and reports
    the first failed stage in words."""

    def __init__(self):
        self.procs, self.errors, self.threads, self.stopped = [], {}, [], set()

    def start(self, what, argv, **kwargs):
        try:
            proc = subprocess.Popen(argv, stderr=subprocess.PIPE, **kwargs)  # pylint: disable=consider-using-with
        except OSError as exc:
            raise CommandExecutionError(f"cannot run {argv[0]} ({what}): {exc.strerror}") from exc
        self.procs.append((what, argv[0], proc))
        return proc

    def collect_stderr(self, proc, what, on_line=None):
        """Read a process's stderr in a thread (a full pipe would stall it)."""
        lines = []
        self.errors[what] = lines

        def read():
            for raw in proc.stderr:
                text = raw.decode(errors="replace").rstrip()
                if on_line is None or not on_line(text):
                    lines.append(text)

        # Salt's dunders live in a context variable: the thread gets a copy.
        thread = threading.Thread(target=contextvars.copy_context().run, args=(read,), daemon=True)
        thread.start()
        self.threads.append(thread)

    def stop(self):
        """A stage ended early: stop the others (they would wait on a pipe forever)."""
        for _what, _tool, proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                self.stopped.add(proc)

    def wait(self):
        for _what, _tool, proc in self.procs:
            proc.wait()
        for thread in self.threads:
            thread.join(timeout=10)

    def failure(self):
        """(stage, 'ssh (sending to the backup host) failed with rc 255: ...') or None."""
        for what, tool, proc in self.procs:
            rc = proc.returncode
            if rc and proc not in self.stopped:
                said = "; ".join(line for line in self.errors.get(what, []) if line)[-400:]
                how = f"was killed by signal {-rc}" if rc < 0 else f"failed with rc {rc}"
                return what, f"{tool} ({what}) {how}" + (f": {said}" if said else "")
        return None

    def close(self):
        for _what, _tool, proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream:
                    with contextlib.suppress(OSError):  # unflushed data to a dead process
                        stream.close()


def _widen_pipe(stream):
    """1 MiB instead of 64 KiB: fewer context switches between the stages."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)


def _remote(dest, settings, script, *lines, timeout=120):
    """Run one constant script on the backup host; ``lines`` (the path first) on its stdin."""
    argv = __utils__["pairvm_backup.ssh_argv"](dest, settings, script)
    try:
        proc = subprocess.run(argv, input="".join(f"{line}\n" for line in lines), capture_output=True,
                              text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise CommandExecutionError(f"ssh to {dest['host']} did not answer within {timeout} s") from exc
    if proc.returncode:
        said = proc.stderr.strip().splitlines()
        raise CommandExecutionError(
            f"ssh {dest['user']}@{dest['host']} failed with rc {proc.returncode}: "
            f"{said[-1] if said else 'no message'}"
        )
    return proc.stdout


def _dest_text(dest):
    return f"{dest['user']}@{dest['host']}:{dest['path']}"


def _send(name, device, size, dest, settings, before_commit):
    """Read ``size`` bytes of ``device`` (pv, rate-limited), compress, send over
    ssh to ``dest``'s temporary name, compare checksums, call ``before_commit``
    (it raises to refuse), then rename there."""
    pipe, committed = _Pipeline(), False
    report = _reporter("backup", name, size)

    def pv_line(text):
        if not text.isdigit():
            return False
        report(int(text))
        return True

    try:
        reader = pipe.start("reading the snapshot", _bk("reader_argv")(device, size, settings["speed"]),
                            stdout=subprocess.PIPE)
        packer = pipe.start(f"{settings['compress']} compression",
                            _bk("compressor")(settings["compress"])["compress"],
                            stdin=reader.stdout, stdout=subprocess.PIPE)
        reader.stdout.close()
        sender = pipe.start("sending to the backup host", _bk("ssh_argv")(dest, settings, "upload"),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        for stream in (packer.stdout, sender.stdin):
            _widen_pipe(stream)
        pipe.collect_stderr(reader, "reading the snapshot", pv_line)
        pipe.collect_stderr(packer, f"{settings['compress']} compression")
        pipe.collect_stderr(sender, "sending to the backup host")
        digest, sent = hashlib.sha256(), 0
        try:
            sender.stdin.write(f"{dest['path']}\n".encode())
            while chunk := packer.stdout.read1(1 << 20):
                digest.update(chunk)
                sender.stdin.write(chunk)
                sent += len(chunk)
            sender.stdin.close()
        except BrokenPipeError:
            pipe.stop()  # ssh ended early: its rc and message say why, below
        answer = sender.stdout.read().decode(errors="replace")
        pipe.wait()
        failed = pipe.failure()
        if failed:
            raise CommandExecutionError(f"backup of {name} to {_dest_text(dest)} failed: {failed[1]}")
        remote_sum, remote_size = _bk("parse_remote_sum")(answer)[:2]
        if (remote_sum, remote_size) != (digest.hexdigest(), sent):
            raise CommandExecutionError(
                f"backup of {name}: the backup host received {remote_size} bytes (sha256 {remote_sum}), "
                f"{sent} were sent (sha256 {digest.hexdigest()}); nothing was renamed"
            )
        before_commit()
        _remote(dest, settings, "commit", dest["path"], digest.hexdigest())
        committed = True
    finally:
        pipe.close()
        if not committed:
            with contextlib.suppress(CommandExecutionError):
                _remote(dest, settings, "abort", dest["path"], timeout=30)
    figures = report(size, final=True)
    return {"bytes": size, "sent": sent, "sha256": digest.hexdigest(),
            "seconds": figures["elapsed"], "rate": figures["rate"]}


def _snapshot_valid(snap_lv):
    """Refuse a snapshot that overflowed while it was read (its data is lost)."""
    res = __salt__["cmd.run_all"](
        ["lvs", "--reportformat", "json", "-o", "lv_full_name,lv_snapshot_invalid,snap_percent", snap_lv],
        python_shell=False, ignore_retcode=True,
    )
    rows = salt.utils.json.loads(res["stdout"] or "{}").get("report", [{}])[0].get("lv", []) \
        if res["retcode"] == 0 else []
    if not rows:
        said = res["stderr"] or res["stdout"]
        raise CommandExecutionError(f"cannot read the state of snapshot {snap_lv}: {said}")
    if rows[0].get("lv_snapshot_invalid") or rows[0].get("snap_percent", "").startswith("100"):
        raise CommandExecutionError(
            f"snapshot {snap_lv} overflowed while it was read ({rows[0]}): raise pairvm:backup:snapshot_size"
        )


class _NotHere(CommandExecutionError):
    """This host must not back the VM up (``why``): an error for one VM, a skip in ``all``."""

    def __init__(self, name, why):
        super().__init__(f"VM {name} is not backed up on {_me()}: {why}")
        self.why = why


def _backup_one(record, destination, settings, on_running_host, test):
    name, me = record["name"], _me()
    dest = _schema("parse_destination", destination, name)
    why = _bk("eligible")(record, me, name in _libvirt_running(), _drbd_status(name), on_running_host)
    if why:
        raise _NotHere(name, why)
    vg = _vg(record)
    origin, snap = f"{vg}/{name}", _bk("snapshot_name")(name)
    if origin not in _lvs():
        raise CommandExecutionError(f"VM {name}'s LV {origin} does not exist on {me}")
    size = _bk("drbd_data_bytes")(_lvs()[origin] * 2**20)
    snapshot_size = _bk("snapshot_size_kwarg")(settings["snapshot_size"])
    size_option = f"{'-l' if 'extents' in snapshot_size else '-L'} {next(iter(snapshot_size.values()))}"
    plan = _Plan(name, test)
    with _lock(name), _sigterm_interrupts():
        if f"{vg}/{snap}" in _lvs():
            plan.step(f"lvremove -f {vg}/{snap} (left by an interrupted backup)", _lvremove, snap, vg)
        plan.step(f"lvcreate -s -n {snap} {size_option} {origin}",
                  _lvcreate_snapshot, snap, vg, name, snapshot_size)
        try:
            speed = f"-L {settings['speed']}k " if settings["speed"] else ""
            sent = plan.step(
                f"pv {speed}/dev/{vg}/{snap} ({size} bytes) | {settings['compress']} "
                f"| ssh -i {settings['key']} {dest['user']}@{dest['host']} > {dest['path']}.partial, "
                f"checksum, rename to {dest['path']} (+ .sha256)",
                _send, name, f"/dev/{vg}/{snap}", size, dest, settings,
                functools.partial(_snapshot_valid, f"{vg}/{snap}"))
        finally:
            plan.step(f"lvremove -f {vg}/{snap}", _lvremove, snap, vg)
    result = plan.result(f"VM {name} backed up to {_dest_text(dest)}")
    if sent:
        result.update(sent, destination=_dest_text(dest))
    return result


def backup(name, destination, speed=None, compress=None, on_running_host=False, test=False):
    """
    Back VM ``name`` up to ``destination`` over SSH: snapshot, compress, send.

    ``name`` is one VM, ``all`` (every VM this host should back up) or a
    comma-separated list. ``destination`` is ``user@host:/path``; ``_NAME``
    in it becomes the VM's name. Runs on the host that is NOT running the VM
    (its disc there is the DRBD replica); on the running host only with
    ``on_running_host=True``; a VM running nowhere is backed up by its home
    host. The disc's snapshot is read at no more than ``speed`` KiB/s
    (default pillar ``pairvm:backup:speed``; 0 = no limit), compressed with
    pigz (gzip) or zstd (``compress=zstd``), written on the backup host to
    ``PATH.partial`` and renamed to PATH only when the whole stream arrived
    and its sha256 matches; ``PATH.sha256`` is stored beside it. The
    snapshot is removed in every case. Progress: event
    ``pairvm/backup/<vm>/progress``.

    With ``all`` or a list, VMs this host must not back up are skipped with
    the reason, and one VM's failure does not stop the others; the result
    lists each VM, and the job fails if one failed.

    SSH: batch mode, key pairvm:backup:key, known hosts
    pairvm:backup:known_hosts, port pairvm:backup:port.

    CLI Example:

    .. code-block:: bash

        salt hostB pairvm.backup vm1 backup@store:/backup/vm1.gz 1024
        salt hostB pairvm.backup all backup@store:/backup/_NAME.gz speed=0 compress=zstd
        salt hostA pairvm.backup vm1 backup@store:/backup/vm1.gz on_running_host=True
    """
    settings = _backup_settings(speed=speed, compress=compress)
    names = str(name).split(",") if name != "all" else sorted(_machines())
    for vm in names:
        _check_name(vm)
    _schema("parse_destination", destination, names[0] if names else None)
    if name != "all" and len(names) == 1:
        return _backup_one(_machine(name), destination, settings, on_running_host, test)
    return _backup_many(names, destination, settings, on_running_host, test)


def _backup_many(names, destination, settings, on_running_host, test):
    report, changes = {}, []
    for vm in names:
        try:
            done = _backup_one(_machine(vm), destination, settings, on_running_host, test)
            report[vm] = {"result": True, **{k: v for k, v in done.items() if k != "name"}}
            changes += done["changes"]
        except _NotHere as exc:
            report[vm] = {"result": None, "comment": f"skipped: {exc.why}"}
        except CommandExecutionError as exc:
            report[vm] = {"result": False, "comment": str(exc)}
    failed = sorted(vm for vm, r in report.items() if r["result"] is False)
    done = sorted(vm for vm, r in report.items() if r["result"])
    if failed:
        __context__["retcode"] = 1
    comment = f"backed up: {', '.join(done) or 'none'}" + (f"; FAILED: {', '.join(failed)}" if failed else "")
    return {"name": ",".join(names), "changes": changes, "comment": comment, "vms": report}


def backup_settings():
    """
    The backup settings of this host: pillar ``pairvm:backup`` validated, with
    defaults, or (without a master) the copy the ``pairvm.config`` state keeps
    in /machines/_global. ``schedule`` is ``{id: {name, destination, speed,
    compress, cron}}`` (``name``: ``all`` or a comma-separated list of VMs),
    what the state ``pairvm.host.backup`` turns into scheduler jobs.

    CLI Example:

    .. code-block:: bash

        salt '*' pairvm.backup_settings
    """
    settings = _backup_settings()
    settings["schedule"] = {
        job_id: {"name": job["vms"] if job["vms"] == "all" else ",".join(job["vms"]),
                 "destination": job["destination"], "speed": job["speed"],
                 "compress": job["compress"], "cron": job["cron"]}
        for job_id, job in settings["schedule"].items()
    }
    return settings


def _receive(operation, name, src, settings, total, sink):
    """Stream ``src`` from the backup host through its decompressor into ``sink``
    (a file descriptor, or DEVNULL to test it); return the sha256 of what came."""
    pipe, digest, got = _Pipeline(), hashlib.sha256(), 0
    report = _reporter(operation, name, total)
    try:
        fetch = pipe.start("reading from the backup host", _bk("ssh_argv")(src, settings, "read"),
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        fetch.stdin.write(f"{src['path']}\n".encode())
        fetch.stdin.close()
        pipe.collect_stderr(fetch, "reading from the backup host")
        head = fetch.stdout.read1(1 << 20)
        kind = _bk("detect_compression")(head)
        if kind is None:
            raise CommandExecutionError(f"{_dest_text(src)} is neither gzip nor zstd data")
        unpack = pipe.start(f"{kind} decompression", _bk("compressor")(kind)["decompress"],
                            stdin=subprocess.PIPE, stdout=sink)
        pipe.collect_stderr(unpack, f"{kind} decompression")
        chunk = head
        try:
            while chunk:
                digest.update(chunk)
                unpack.stdin.write(chunk)
                got += len(chunk)
                report(got)
                chunk = fetch.stdout.read1(1 << 20)
            unpack.stdin.close()
        except BrokenPipeError:
            pipe.stop()  # the decompressor ended early: its rc and message say why, below
        pipe.wait()
        failed = pipe.failure()
        if failed and failed[0].endswith("decompression"):
            raise CommandExecutionError(f"{_dest_text(src)} is damaged: {failed[1]}")
        if failed:
            raise CommandExecutionError(f"{operation} of {_dest_text(src)} failed: {failed[1]}")
    finally:
        pipe.close()
    report(got, final=True)
    return digest.hexdigest(), kind


def _stored_backup(source, name, settings, check):
    """(source dict, stored sha256, size) of a backup; ``check`` also has the backup
    host hash the file and refuses one that does not match its .sha256."""
    src = _schema("parse_destination", source, name)
    answer = _remote(src, settings, "check" if check else "stat", src["path"], timeout=3600)
    try:
        stored, size, *actual = _bk("parse_remote_sum")(answer)
    except ValueError as exc:
        raise CommandExecutionError(f"{_dest_text(src)}: {exc}") from exc
    if check and actual[0] != stored:
        raise CommandExecutionError(
            f"{_dest_text(src)} is damaged: its sha256 is {actual[0]}, {src['path']}.sha256 says {stored}"
        )
    return src, stored, size


def verify_backup(source, name=None):
    """
    Check a backup's integrity without restoring it.

    Reads ``source`` (``user@host:/path``; ``_NAME`` becomes ``name``) from
    the backup host, compares its sha256 with the ``.sha256`` stored beside
    it and decompresses the whole stream (nothing is written). Raises with
    the reason when it is damaged. Progress: event
    ``pairvm/verify_backup/<name>/progress``.

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm.verify_backup backup@store:/backup/vm1.gz
        salt hostA pairvm.verify_backup backup@store:/backup/_NAME.gz name=vm1
    """
    if name is not None:
        _check_name(name)
    settings = _backup_settings()
    src, stored, size = _stored_backup(source, name, settings, check=False)
    label = name or os.path.basename(src["path"])
    actual, kind = _receive("verify_backup", label, src, settings, size, subprocess.DEVNULL)
    if actual != stored:
        raise CommandExecutionError(
            f"{_dest_text(src)} is damaged: its sha256 is {actual}, {src['path']}.sha256 says {stored}"
        )
    return {"name": label, "source": _dest_text(src), "result": True, "sha256": actual,
            "compressed_bytes": size, "compression": kind,
            "comment": f"{_dest_text(src)} is intact ({kind}, sha256 {actual})"}


def restore(name, source, confirm=False, test=False):
    """
    Write a backup onto VM ``name``'s disc, replacing everything on it.

    Runs on the VM's home host while the VM is stopped on both hosts and
    DRBD is Connected with both discs UpToDate: the disc is written through
    this host's DRBD Primary, so the peer receives every byte. The backup
    host first checks the file against its ``.sha256``; the stream is
    checked again as it arrives. ``source`` is ``user@host:/path``
    (``_NAME`` becomes ``name``). Needs ``confirm=True``. Progress: event
    ``pairvm/restore/<name>/progress``.

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm.restore vm1 backup@store:/backup/vm1.gz confirm=True
        salt hostA pairvm.restore vm2 backup@store:/backup/vm1.gz confirm=True test=True
    """
    record = _machine(name)
    settings = _backup_settings()
    src = _schema("parse_destination", source, name)
    if not confirm and not test:
        raise CommandExecutionError(
            f"restore overwrites VM {name}'s whole disc on both hosts: pass confirm=True"
        )
    with _lock(name), _sigterm_interrupts():
        _check_may_restore(record)
        plan = _Plan(name, test)
        checked = plan.step(f"ssh {src['user']}@{src['host']}: sha256 of {src['path']} against its .sha256",
                            _stored_backup, source, name, settings, True)
        stored, size = checked[1:] if checked else (None, 0)
        device = f"/dev/drbd{record['drbd_minor']}"
        plan.step(f"drbdadm primary {name}", __salt__["drbd.primary"], name)
        try:
            got = plan.step(f"ssh {src['user']}@{src['host']} cat {src['path']} | decompress > {device}",
                            _restore_stream, name, src, settings, size, device)
        finally:
            plan.step(f"drbdadm secondary {name}", __salt__["drbd.secondary"], name)
        if got != stored:
            raise CommandExecutionError(
                f"the stream from {_dest_text(src)} had sha256 {got}, not {stored}: VM {name}'s disc "
                f"holds damaged data now; restore again"
            )
    return plan.result(f"VM {name}'s disc restored from {_dest_text(src)} on both hosts")


def _check_may_restore(record):
    name = record["name"]
    if record["home"] != _me():
        raise CommandExecutionError(
            f"restore VM {name} on its home host {record['home']}, not on {_me()}"
        )
    if name in _libvirt_running():
        raise CommandExecutionError(f"VM {name} is running on {_me()}: stop it first")
    if _check_peer_receives(record, "the restored disc").get("role") == "Primary":
        raise CommandExecutionError(f"VM {name}'s disc is Primary on {_me()} (is it running?): stop it first")


def _restore_stream(name, src, settings, size, device):
    fd = os.open(device, os.O_WRONLY)
    try:
        got, _kind = _receive("restore", name, src, settings, size, fd)
        os.fsync(fd)
    finally:
        os.close(fd)
    return got


# --- image: install a guest OS from the image catalogue, with a cloud-init seed -------


IMAGE_CACHE_DIR = "/var/cache/pairvm/images"
SEED_DIR = "/var/lib/pairvm/seeds"
FIRSTBOOT_MAX_BYTES = 256 * 1024
COPY_CHUNK = 4 * 2**20
HTTP_TIMEOUT = 60
ISO_TOOLS = ("genisoimage", "xorriso")


def image(name, dist, hostname, password, firstboot=None, test=False):
    """
    Write OS image ``dist`` from the catalogue onto stopped VM ``name``'s disc,
    with a cloud-init NoCloud seed CD for its first boot.

    Only on the VM's home host, only while the VM is stopped here, and only
    while DRBD is Connected with both discs UpToDate and the peer Secondary,
    so the peer receives every byte. Steps: fetch the image named ``dist`` in
    pillar ``pairvm:images`` into ``/var/cache/pairvm/images/<sha256>`` (an
    http(s) download resumes where it stopped; a local path is read in place),
    check its sha256 (a mismatch writes nothing), check it fits, promote the
    DRBD resource, write the image onto ``/dev/drbd<minor>`` (``qemu-img
    convert`` for qcow2), demote it, then build the seed ISO
    ``/var/lib/pairvm/seeds/<name>.iso`` (volume id ``cidata``, mode 0600):
    ``meta-data`` (a new instance-id, ``hostname``), ``user-data`` (root's
    password hash, the SSH keys of pillar ``pairvm:guest_ssh_keys``, the
    ``firstboot`` script run once) and ``network-config`` (the VM's IP, the
    pool's netmask and gateway). ``start`` boots the VM with the seed as its
    CD until ``pairvm.cdrom NAME eject=True``, a new image, or destroy.
    Progress (bytes, rate, ETA, and ``phase``: download, verify or write) is
    reported as event ``pairvm/image/<name>/progress`` and, under salt-call,
    on stderr.

    ``hostname`` must be a fully qualified domain name. ``firstboot`` is the
    absolute path of a script on this host (at most 256 KiB), put into the
    seed and run once by cloud-init.

    ``password`` must be a SHA-512 crypt hash (``$6$...``): a plaintext
    password is refused, because any Salt argument is kept in the master's job
    cache, the minion's proc file and debug log, and the argv of salt-call.
    Make a hash with ``openssl passwd -6`` (it prompts), or use the host
    command ``pairvm image``, which prompts for the password and hashes it
    before calling Salt. Only the hash is ever written to disc, and no
    result, event or log line carries it.

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm.image vm1 bookworm vm1.example.org "$(openssl passwd -6)"
        salt hostA pairvm.image vm1 bookworm vm1.example.org '$6$...' firstboot=/root/setup.sh
        salt hostA pairvm.image vm1 bookworm vm1.example.org '$6$...' test=True
    """
    record = _machine(name)
    if record["home"] != _me():
        raise CommandExecutionError(
            f"VM {name}'s home is {record['home']}, not {_me()}: write its image there "
            f"(the home host writes through DRBD, so both hosts get it)"
        )
    pairvm = __pillar__.get("pairvm", {})
    catalogue = _schema("images", pairvm)
    if dist not in catalogue:
        known = ", ".join(sorted(catalogue)) or "none: pillar pairvm:images is empty"
        raise CommandExecutionError(f"unknown image {dist!r}; known images: {known}")
    hostname = _schema("validate_fqdn", hostname)
    if not __utils__["pairvm_schema.is_password_hash"](password):
        raise CommandExecutionError(
            "password: not a SHA-512 crypt hash ($6$...). pairvm.image takes only a hash, so that no "
            "plaintext reaches a job cache, log or process list: make one with `openssl passwd -6` "
            "(it prompts), or run `pairvm image` on the host, which prompts and hashes"
        )
    script = _firstboot_script(firstboot)
    ssh_keys = _schema("guest_ssh_keys", pairvm)
    entry = catalogue[dist]
    iso_tool = next((tool for tool in ISO_TOOLS if salt.utils.path.which(tool)), None)
    qemu_img = entry["format"] != "qcow2" or salt.utils.path.which("qemu-img")
    missing = [tool for tool, ok in (("genisoimage or xorriso", iso_tool), ("qemu-img", qemu_img)) if not ok]
    if missing:
        raise CommandExecutionError(f"image: {' and '.join(missing)} not installed on {_me()}")
    with _lock(name):
        with _libvirt() as conn:
            dom = _domain(conn, name)
            if dom is not None and dom.isActive():
                raise CommandExecutionError(
                    f"VM {name} is running on {_me()}: stop it before writing an image"
                )
        drbd = _check_peer_receives(record, "the image")
        plan = _Plan(name, test)
        source = _image_steps(plan, record, dist, entry, drbd)
        seed = os.path.join(SEED_DIR, f"{name}.iso")
        files = __utils__["pairvm_seed.files"](record, f"pairvm-{name}-{int(time.time())}", hostname,
                                               password, ssh_keys, script)
        plan.step(f"{iso_tool} -volid cidata ({', '.join(files)}) -> {seed} (mode 0600)",
                  _write_seed, seed, files, iso_tool)
        return plan.result(f"VM {name} has image {dist} ({source}) and boots with seed {seed} "
                           f"as hostname {hostname}")


def _firstboot_script(path):
    """The text of the first-boot script at ``path`` (None for none), checked."""
    if path is None:
        return None
    if not isinstance(path, str) or not os.path.isabs(path) or ".." in path.split("/"):
        raise CommandExecutionError(f"firstboot: {path!r} is not an absolute path without '..'")
    if not os.path.isfile(path):
        raise CommandExecutionError(f"firstboot: {path} is not a file on {_me()}")
    if os.path.getsize(path) > FIRSTBOOT_MAX_BYTES:
        raise CommandExecutionError(f"firstboot: {path} is larger than {FIRSTBOOT_MAX_BYTES // 1024} KiB")
    try:
        with salt.utils.files.fopen(path, "r") as fh:
            return fh.read()
    except UnicodeDecodeError as exc:
        raise CommandExecutionError(f"firstboot: {path} is not a UTF-8 text script") from exc


def _check_peer_receives(record, what):
    """Before writing ``what`` onto the disc through DRBD: Connected, both discs
    UpToDate, the peer Secondary, so that the peer receives every byte."""
    name = record["name"]
    drbd = _drbd_status(name)
    if not drbd:
        raise CommandExecutionError(f"DRBD resource {name} is not up on {_me()}: run pairvm.autostart")
    if drbd.get("peer_role") == "Primary":
        raise CommandExecutionError(f"VM {name}'s disc is Primary on the peer: stop it there first")
    if drbd.get("connection") != "Connected":
        raise CommandExecutionError(
            f"DRBD resource {name} is {drbd.get('connection')}, not Connected: the peer would not receive "
            f"{what}. Reconnect the pair first"
        )
    if drbd.get("disk") != "UpToDate" or drbd.get("peer_disk") != "UpToDate":
        raise CommandExecutionError(
            f"VM {name}'s discs are {drbd.get('disk')} here and {drbd.get('peer_disk')} on the peer, "
            f"not both UpToDate: wait for the sync to finish"
        )
    return drbd


def _image_steps(plan, record, dist, entry, drbd):
    """Fetch and check the image, then write it through DRBD; returns its source."""
    name, sha = record["name"], entry["sha256"]
    device = _drbd_device(record)
    source = entry["source"]
    if source.startswith("/"):
        path = source
        plan.step(f"sha256sum {path} (expect {sha})", _verify_image, name, path, sha, False)
    else:
        path = os.path.join(IMAGE_CACHE_DIR, sha)
        if os.path.exists(path):
            plan.step(f"sha256sum {path} (cached {dist}, expect {sha})", _verify_image, name, path, sha, True)
        else:
            plan.step(f"download {source} -> {path}.part (resumable)",
                      _download, name, source, f"{path}.part")
            plan.step(f"sha256sum {path}.part (expect {sha}), then rename it to {path}",
                      _verify_download, name, path, sha)
    plan.step(f"check that {entry['format']} image {dist} fits on {device}",
              _check_fits, name, path, entry["format"], device)
    old_seed = _seed(name)
    if old_seed:  # it belongs to the image about to be overwritten
        plan.step(f"rm {old_seed} (the seed of the previous image)", os.unlink, old_seed)
    promote = drbd.get("role") != "Primary"
    if promote:
        plan.step(f"drbdadm primary {name}", __salt__["drbd.primary"], name)
    try:
        if entry["format"] == "qcow2":
            plan.step(f"qemu-img convert -p -n -f qcow2 -O raw {path} {device}",
                      _convert_qcow2, name, path, device)
        else:
            plan.step(f"copy {path} -> {device} (raw)", _copy_raw, name, path, device)
    except Exception:
        if promote and not plan.test:
            _demote_after_failure(name)
        raise
    if promote:
        plan.step(f"drbdadm secondary {name}", __salt__["drbd.secondary"], name)
    return source


def _drbd_device(record):
    return f"/dev/drbd{record['drbd_minor']}"


def _demote_after_failure(name):
    try:
        __salt__["drbd.secondary"](name)
    except CommandExecutionError as exc:
        log.error("pairvm: image of %s failed and DRBD could not be demoted: %s", name, exc)


def _sha256_of(name, path):
    digest = hashlib.sha256()
    report = _reporter("image", name, os.path.getsize(path), phase="verify")
    done = 0
    with salt.utils.files.fopen(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(COPY_CHUNK), b""):
            digest.update(chunk)
            done += len(chunk)
            report(done)
    report(done, final=True)
    return digest.hexdigest()


def _verify_image(name, path, sha, cached):
    if not os.path.isfile(path):
        raise CommandExecutionError(f"image: {path} does not exist on {_me()}")
    found = _sha256_of(name, path)
    if found != sha:
        if cached:
            os.unlink(path)
        raise CommandExecutionError(
            f"image: sha256 of {path} is {found}, the catalogue says {sha}: nothing was written"
            + ("; the cached copy was removed, run again to download it anew" if cached else "")
        )


def _verify_download(name, path, sha):
    part = f"{path}.part"
    found = _sha256_of(name, part)
    if found != sha:
        os.unlink(part)  # complete but wrong: resuming it could never help
        raise CommandExecutionError(
            f"image: sha256 of the download is {found}, the catalogue says {sha}: nothing was written "
            f"(is the catalogue's sha256 or the server's file wrong?)"
        )
    os.rename(part, path)


def _download(name, url, part):
    """Download ``url`` into ``part``, continuing a partial file with an HTTP Range request."""
    os.makedirs(IMAGE_CACHE_DIR, mode=0o700, exist_ok=True)
    have = os.path.getsize(part) if os.path.exists(part) else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=HTTP_TIMEOUT)  # noqa: S310 - http(s) only, checked
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the partial file is already whole
            return
        raise CommandExecutionError(f"image: download of {url} failed: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise CommandExecutionError(f"image: download of {url} failed: {exc}") from exc
    with response:
        if have and response.status != 206:  # the server ignored Range: start again
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        report = _reporter("image", name, total, phase="download")
        done = have
        try:
            with salt.utils.files.fopen(part, "ab" if have else "wb") as out:
                os.chmod(part, 0o600)
                for chunk in iter(lambda: response.read(COPY_CHUNK), b""):
                    out.write(chunk)
                    done += len(chunk)
                    report(done)
        except OSError as exc:
            raise CommandExecutionError(
                f"image: download of {url} stopped at {done} bytes ({exc}); run again to resume"
            ) from exc
        report(done, final=True)
    if total is not None and done < total:
        raise CommandExecutionError(f"image: download of {url} stopped at {done} of {total} bytes; "
                                    f"run again to resume")


def _run(argv, what):
    res = __salt__["cmd.run_all"](argv, python_shell=False, ignore_retcode=True, output_loglevel="quiet")
    if res["retcode"] != 0:
        raise CommandExecutionError(f"{what} failed: {(res['stderr'] or res['stdout']).strip()}")
    return res["stdout"]


def _qcow2_info(path):
    info = salt.utils.json.loads(_run(["qemu-img", "info", "--output=json", path], f"qemu-img info {path}"))
    if info.get("format") != "qcow2":
        raise CommandExecutionError(f"image: {path} is {info.get('format')}, not qcow2 as the catalogue says")
    if info.get("backing-filename"):  # it would pull another file of this host onto the disc
        raise CommandExecutionError(f"image: {path} has a backing file: give a self-contained qcow2 image")
    return info


def _check_fits(name, path, fmt, device):
    """Refuse an image that is not of its catalogue format, or larger than the disc."""
    size = _qcow2_info(path)["virtual-size"] if fmt == "qcow2" else os.path.getsize(path)
    disc = int(_run(["blockdev", "--getsize64", device], f"blockdev {device}"))
    if size > disc:
        raise CommandExecutionError(
            f"image: {size} bytes do not fit on VM {name}'s disc ({disc} bytes): grow it with pairvm.resize"
        )


def _copy_raw(name, path, device):
    report = _reporter("image", name, os.path.getsize(path), phase="write")
    done = 0
    with salt.utils.files.fopen(path, "rb") as src, salt.utils.files.fopen(device, "r+b") as dst:
        for chunk in iter(lambda: src.read(COPY_CHUNK), b""):
            dst.write(chunk)
            done += len(chunk)
            report(done)
        dst.flush()
        os.fsync(dst.fileno())
    report(done, final=True)


def _convert_qcow2(name, path, device):
    """qemu-img convert onto the device, its -p percentages turned into progress reports."""
    total = _qcow2_info(path).get("virtual-size")
    report = _reporter("image", name, total, phase="write")
    argv = ["qemu-img", "convert", "-p", "-n", "-f", "qcow2", "-O", "raw", path, device]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        text = b""
        for byte in iter(lambda: proc.stdout.read(1), b""):
            if byte not in (b"\r", b"\n"):
                text += byte
                continue
            match = re.search(rb"\(([0-9.]+)/100%\)", text)
            text = b""
            if match and total:
                report(int(float(match.group(1)) * total / 100))
        stderr = proc.stderr.read().decode("utf-8", "replace")
        if proc.wait() != 0:
            raise CommandExecutionError(f"qemu-img convert {path} -> {device} failed: {stderr.strip()}")
    report(total or 0, final=True)


def _write_seed(seed, files, tool):
    """Build the NoCloud ISO from files written into a root-only directory; 0600, atomically."""
    os.makedirs(SEED_DIR, mode=0o711, exist_ok=True)
    os.chmod(SEED_DIR, 0o711)  # qemu (libvirt chowns the ISO to it) must reach the file, not list
    work = tempfile.mkdtemp(prefix=".seed-", dir=SEED_DIR)  # mode 0700
    try:
        for fname, text in files.items():
            fd = os.open(os.path.join(work, fname), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
        tmp = os.path.join(work, "seed.iso")
        paths = [os.path.join(work, fname) for fname in files]
        if tool == "xorriso":
            argv = ["xorriso", "-as", "mkisofs", "-quiet", "-o", tmp, "-V", "cidata", "-J", "-R", *paths]
        else:
            argv = ["genisoimage", "-quiet", "-o", tmp, "-V", "cidata", "-J", "-R", *paths]
        _run(argv, f"{tool} (seed ISO)")
        os.chmod(tmp, 0o600)
        os.rename(tmp, seed)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _seed(name):
    """The seed ISO pairvm.image left for VM ``name``, or None."""
    path = os.path.join(SEED_DIR, f"{name}.iso")
    return path if os.path.isfile(path) else None
