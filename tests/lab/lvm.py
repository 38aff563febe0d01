"""Private LVM for one lab host: config, volume groups, loop clean-up.

Pure helpers for the lab builder (no fixtures, no global state). Every
command runs through a ``run`` callable that executes an argv *inside* the
lab host (its mount + UTS namespace, PATH starting with tests/lab/shims) and
returns a :class:`subprocess.CompletedProcess` with text output.

This kernel has no device-mapper: real lvm2 runs with ``activation = 0``
(metadata only) and the shims in ``tests/lab/shims`` give each LV its data as
a loop device over a sparse file (see ``tests/lab/lvmshim/README.md``).
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from pathlib import Path

VOLUME_GROUPS = ("here", "there")

# LVM accepts a device path in a filter as a regex between '|' delimiters;
# the lab only ever passes loop devices, keep the grammar trivially safe.
_DEVICE_RE = re.compile(r"^/dev/[A-Za-z0-9_/-]+$")


def _q(value: str) -> str:
    """Quote a string for lvm.conf (a path from this module: no quotes)."""
    if '"' in value or "\\" in value or "\n" in value:
        raise ValueError(f"unsupported character in lvm.conf value: {value!r}")
    return f'"{value}"'


def render_lvm_conf(
    state_dir: str | os.PathLike, allowed_devices, *, extra: str = ""
) -> str:
    """Return the text of a lab lvm.conf.

    ``state_dir`` holds LVM's locking, backup, archive and cache dirs.
    ``allowed_devices`` are the only device paths LVM may scan; every other
    device is rejected by both ``filter`` and ``global_filter``.
    """
    state = Path(state_dir)
    accept = []
    for dev in allowed_devices:
        dev = str(dev)
        if not _DEVICE_RE.match(dev):
            raise ValueError(f"not a plain /dev path: {dev!r}")
        accept.append(f'"a|^{dev}$|"')
    filt = "[ " + ", ".join(accept + ['"r|.*|"']) + " ]"
    return f"""\
# Written by tests/lab/lvm.py: private LVM of one lab host. Do not edit.
# Only the lab's loop devices are ever scanned; activation is off because
# this kernel has no device-mapper (tests/lab/shims emulate the devices).
config {{
    checks = 1
    abort_on_errors = 0
}}
devices {{
    dir = "/dev"
    scan = [ "/dev" ]
    filter = {filt}
    global_filter = {filt}
    use_devicesfile = 0
    obtain_device_list_from_udev = 0
    external_device_info_source = "none"
    hints = "none"
    cache_dir = {_q(str(state / "cache"))}
    write_cache_state = 0
    sysfs_scan = 1
    md_component_detection = 0
    multipath_component_detection = 0
    fw_raid_component_detection = 0
}}
log {{
    syslog = 0
    level = 0
    verbose = 0
}}
backup {{
    backup = 1
    backup_dir = {_q(str(state / "backup"))}
    archive = 1
    archive_dir = {_q(str(state / "archive"))}
}}
global {{
    activation = 0
    locking_dir = {_q(str(state / "lock"))}
    use_lvmpolld = 0
    use_lvmlockd = 0
    event_activation = 0
    notify_dbus = 0
    system_id_source = "none"
}}
activation {{
    udev_sync = 0
    udev_rules = 0
    verify_udev_operations = 0
    monitoring = 0
}}
{extra}"""


def write_lvm_conf(
    etc_lvm_dir: str | os.PathLike,
    allowed_devices,
    run_dir: str | os.PathLike | None = None,
) -> Path:
    """Write ``<etc_lvm_dir>/lvm.conf`` for a lab host and return its path.

    ``etc_lvm_dir`` is the host's private directory that the lab binds over
    /etc/lvm (e.g. ``/var/tmp/pvlab/hostA/root/etc/lvm``). Its absolute path
    is written into the config, so the config means the same inside the
    host's mount namespace and outside it. LVM's locking dir, backup,
    archive and cache dirs go under ``run_dir`` (default: ``etc_lvm_dir``),
    never under the machine's own /run/lock/lvm or /etc/lvm.
    """
    etc = Path(etc_lvm_dir).resolve()
    state = Path(run_dir).resolve() if run_dir is not None else etc
    etc.mkdir(parents=True, exist_ok=True)
    for sub in ("cache", "backup", "archive", "lock"):
        (state / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    conf = etc / "lvm.conf"
    tmp = conf.with_name(".lvm.conf.tmp")
    tmp.write_text(render_lvm_conf(state, allowed_devices))
    os.replace(tmp, conf)
    return conf


def _check(proc: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    if proc.returncode != 0:
        raise RuntimeError(
            f"{what} failed (rc {proc.returncode}): {' '.join(map(str, proc.args))}\n"
            f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
        )
    return proc


def _attach(run, image: Path) -> str:
    """Read-write loop device over ``image``: reuse an attached one, else attach.

    A loop device keeps a ``blockdev --setro`` across detach and re-attach
    (seen on this machine), so the result is made read-write explicitly.
    """
    found = _check(run(["losetup", "-j", str(image)]), "losetup -j").stdout
    devs = [line.split(":", 1)[0].strip() for line in found.splitlines()]
    dev = next((d for d in devs if d), None)
    if dev is None:
        dev = _check(run(["losetup", "--find", "--show", str(image)]), "losetup").stdout.strip()
    _check(run(["blockdev", "--setrw", dev]), "blockdev --setrw")
    return dev


def create_volume_groups(
    run,
    host_dir: str | os.PathLike,
    size_mib: int,
    *,
    etc_lvm_dir: str | os.PathLike | None = None,
    run_dir: str | os.PathLike | None = None,
) -> dict:
    """Create the host's PVs and the VGs ``here`` and ``there``.

    For each VG: a sparse file ``<host_dir>/pv-<vg>.img`` of ``size_mib``
    MiB, a loop device over it, then ``pvcreate`` and ``vgcreate``. The
    lvm.conf in ``etc_lvm_dir`` (default ``<host_dir>/root/etc/lvm``, the
    dir the lab binds over /etc/lvm) is (re)written to accept exactly those
    loop devices before LVM runs.

    Idempotent: existing images, attached loops, PVs and VGs are reused (loop
    numbers may differ after a killed run; the config follows them). When the
    VGs already existed, ``lvchange -ay here there`` (through the shim) brings
    back the devices of their LVs. Returns ``{"here": "/dev/loopN", ...}``.
    """
    host = Path(host_dir)
    host.mkdir(parents=True, exist_ok=True)
    etc = Path(etc_lvm_dir) if etc_lvm_dir is not None else host / "root" / "etc" / "lvm"
    devices = {}
    for vg in VOLUME_GROUPS:
        image = host / f"pv-{vg}.img"
        want = size_mib * 1024 * 1024
        if not image.exists() or image.stat().st_size < want:
            with open(image, "ab") as fh:
                fh.truncate(want)
        devices[vg] = _attach(run, image)
    write_lvm_conf(etc, devices.values(), run_dir=run_dir)

    report = _check(
        run(["pvs", "--reportformat", "json", "-o", "pv_name,vg_name"]), "pvs"
    ).stdout
    pvs = {
        row["pv_name"]: row["vg_name"]
        for part in json.loads(report)["report"]
        for row in part.get("pv", [])
    }
    existed = []
    for vg, dev in devices.items():
        if dev not in pvs:
            _check(run(["pvcreate", "--yes", dev]), "pvcreate")
        if pvs.get(dev) == vg:
            existed.append(vg)
        elif pvs.get(dev):
            raise RuntimeError(f"{dev} belongs to VG {pvs[dev]!r}, expected {vg!r}")
        else:
            _check(run(["vgcreate", vg, dev]), "vgcreate")
    if existed:
        _check(run(["lvchange", "-ay", *existed]), "lvchange -ay")
    return devices


def lab_loops(data_dir: str | os.PathLike) -> list[tuple[str, str]]:
    """(loop device, backing file) for every loop backed by a file under data_dir."""
    root = os.path.realpath(data_dir).rstrip("/") + "/"
    proc = subprocess.run(
        ["losetup", "-J", "-l"], capture_output=True, text=True, check=True
    )
    found = []
    if not proc.stdout.strip():
        return found
    for row in json.loads(proc.stdout).get("loopdevices", []):
        back = row.get("back-file") or ""
        if back.endswith(" (deleted)"):
            back = back[: -len(" (deleted)")]
        if back.startswith(root):
            found.append((row["name"], back))
    return found


def detach_lab_loops(data_dir: str | os.PathLike) -> list[str]:
    """Detach every loop device whose backing file is under ``data_dir``.

    For cleaning up after a killed run. Loop devices are global kernel
    objects, so this works from the root namespace (by minor number through
    sysfs if the root /dev lacks the node). Returns the detached devices.
    """
    detached = []
    for dev, _back in lab_loops(data_dir):
        temp = None
        node = dev
        if not os.path.exists(node):  # e.g. run from a namespace with a small /dev
            temp = node = _loop_node(dev)
        try:
            proc = subprocess.run(["losetup", "-d", node], capture_output=True, text=True)
        finally:
            if temp:
                os.unlink(temp)
        if proc.returncode == 0 or "No such device" in proc.stderr:
            detached.append(dev)
        else:
            raise RuntimeError(f"losetup -d {node}: {proc.stderr.strip()}")
    return detached


def _loop_node(dev: str) -> str:
    """A temporary block node for ``/dev/loopN``."""
    num = int(re.sub(r"^/dev/loop", "", dev))
    node = f"/run/pvlab-loop{num}.{os.getpid()}"
    os.mknod(node, 0o600 | stat.S_IFBLK, os.makedev(7, num))
    return node


def process_start_time(pid: int) -> str:
    """Start time of a process (field 22 of /proc/PID/stat): tells a pid reused."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def record_holder(data_dir: Path, pid: int) -> None:
    """Note which process holds the namespaces that use data_dir's loop devices."""
    (Path(data_dir) / "holder.pid").write_text(f"{pid} {process_start_time(pid)}")


def reap_killed_runs(base: Path, prefix: str) -> None:
    """Detach the loops of earlier test runs (pytest temp dirs ``<prefix>*``)
    whose holder process is gone: a killed run. A run still going on
    elsewhere keeps its holder alive and is left alone."""
    for pidfile in Path(base).parent.glob(f"pytest-*/{prefix}*/holder.pid"):
        try:
            pid, start = pidfile.read_text().split()
            alive = process_start_time(int(pid)) == start
        except (OSError, ValueError):
            alive = False
        if not alive:
            detach_lab_loops(pidfile.parent)
            pidfile.unlink(missing_ok=True)
