"""Device side of the lab's LVM shim: loop devices over sparse files.

Real lvm2 keeps the metadata (``activation = 0``: this kernel has no
device-mapper). After a shimmed command succeeded, :func:`sync` makes the
devices follow the metadata, for every LV of every VG the host sees:

* data of LV ``VG/LV``: sparse file ``$PVLAB_DATA/<uname -n>/lv/VG/LV``
  (size = lv_size; for an emulated snapshot, the origin's size);
* an active LV: a loop device over that file and the symlink
  ``/dev/VG/LV -> ../loopN`` (what real LVM makes, to ``../dm-N``);
* LVs are followed by UUID (``lvshim.json`` in the host dir), so a rename
  moves the file and the symlink (the loop device and its openers stay),
  a removed LV loses its loop, symlink and file, a resized LV gets its file
  truncated and ``losetup --set-capacity``.

Stdlib only: runs under /usr/bin/python3 from tests/lab/shims.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import stat
import subprocess
import sys
from contextlib import contextmanager, suppress
from dataclasses import dataclass

REAL_SBIN = "/sbin"
SNAPSHOT_TAG = "pvlab_snapshot_of="
STATE_VERSION = 1

# stderr lines real lvm2 prints only because activation is off in the lab.
NOISE = (
    "WARNING: Activation disabled. No device-mapper interaction will be attempted.",
    "WARNING: Skipping zeroing and wipping, compiled without activation support.",
)
_NOT_ZEROED = re.compile(r"^WARNING: Logical volume \S+ not zeroed\.$")


class ShimError(Exception):
    """The device side failed (the metadata change, if any, stands)."""


def say(msg):
    sys.stderr.write(f"  pvlab lvm shim: {msg}\n")
    sys.stderr.flush()


# --- the host ------------------------------------------------------------

class Host:
    """Paths of the lab host this process runs in (``uname -n``)."""

    def __init__(self, data=None, name=None):
        self.data = data if data is not None else os.environ.get("PVLAB_DATA", "")
        self.name = name or os.uname().nodename
        self.dir = os.path.join(self.data, self.name) if self.data else ""
        self.lvdir = os.path.join(self.dir, "lv")
        self.tmpdir = os.path.join(self.dir, "lv-tmp")
        self.state_file = os.path.join(self.dir, "lvshim.json")
        self.lock_file = os.path.join(self.dir, "lvshim.lock")

    @property
    def enabled(self):
        """Only act inside a lab host: PVLAB_DATA set and <data>/<host> present."""
        return bool(self.data) and os.path.isdir(self.dir)

    def data_path(self, vg, lv):
        return os.path.join(self.lvdir, vg, lv)

    @contextmanager
    def locked(self):
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def load_state(self):
        """{uuid: {"vg", "lv", "active", "origin"}} or None when never written."""
        try:
            with open(self.state_file, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            say(f"ignoring unreadable {self.state_file}")
            return None
        if data.get("version") != STATE_VERSION:
            return None
        return data.get("lvs", {})

    def save_state(self, lvs):
        tmp = self.state_file + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"version": STATE_VERSION, "lvs": lvs}, fh, indent=1, sort_keys=True)
        os.replace(tmp, self.state_file)


def link_path(vg, lv):
    return f"/dev/{vg}/{lv}"


# --- real LVM ------------------------------------------------------------

def real(cmd):
    return os.path.join(REAL_SBIN, cmd)


def filter_noise(text):
    """Drop the stderr lines that exist only because activation is off."""
    out = []
    skipped_zeroing = False
    for line in text.splitlines(keepends=True):
        bare = line.strip()
        if bare in NOISE:
            skipped_zeroing |= "zeroing" in bare
            continue
        if skipped_zeroing and _NOT_ZEROED.match(bare):
            continue
        out.append(line)
    return "".join(out)


def run_real(cmd, args, capture=True):
    """Run the real LVM command; returns CompletedProcess (text)."""
    if capture:
        proc = subprocess.run(
            [real(cmd), *args], stdin=subprocess.DEVNULL,
            capture_output=True, text=True,
        )
        proc.stderr = filter_noise(proc.stderr)
        return proc
    return passthrough(cmd, args)


def passthrough(cmd, args):
    """Run the real command with the caller's stdin/stdout; filter stderr."""
    proc = subprocess.Popen(
        [real(cmd), *args], stderr=subprocess.PIPE, text=True, bufsize=1,
    )
    skipped_zeroing = False
    for line in proc.stderr:
        bare = line.strip()
        if bare in NOISE:
            skipped_zeroing |= "zeroing" in bare
            continue
        if skipped_zeroing and _NOT_ZEROED.match(bare):
            continue
        sys.stderr.write(line)
        sys.stderr.flush()
    proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, None, None)


def report(cmd, args):
    """Rows of a real ``<cmd> --reportformat json`` report, or None on failure."""
    proc = run_real(cmd, [*args, "--reportformat", "json"])
    if proc.returncode != 0:
        return None, proc
    return json.loads(proc.stdout), proc


@dataclass
class LV:
    uuid: str
    vg: str
    name: str
    size: int
    tags: list
    extent_size: int = 0
    readonly: bool = False

    @property
    def origin(self):
        """Origin LV name of an emulated snapshot, else None."""
        for tag in self.tags:
            if tag.startswith(SNAPSHOT_TAG):
                return tag[len(SNAPSHOT_TAG):]
        return None


def _split_tags(text):
    return [t for t in (text or "").split(",") if t]


def metadata():
    """(set of VG names, {uuid: LV}) of every VG this host's LVM sees."""
    data, proc = report("lvm", [
        "fullreport", "--units", "b", "--nosuffix",
        "--configreport", "vg", "-o", "vg_name",
        "--configreport", "lv", "-o", "lv_uuid,lv_name,lv_size,lv_tags,lv_permissions",
        "--configreport", "pv", "-o", "pv_name",
        "--configreport", "pvseg", "-o", "pvseg_start",
        "--configreport", "seg", "-o", "seg_start",
    ])
    if data is None:
        raise ShimError(f"lvm fullreport failed: {proc.stderr.strip()}")
    vgs, lvs = set(), {}
    for part in data.get("report", []):
        names = [row["vg_name"] for row in part.get("vg", [])]
        if not names:
            continue
        vg = names[0]
        vgs.add(vg)
        for row in part.get("lv", []):
            name = row["lv_name"]
            if name.startswith("["):  # hidden (internal) LV
                continue
            lvs[row["lv_uuid"]] = LV(
                row["lv_uuid"], vg, name, int(row["lv_size"]), _split_tags(row["lv_tags"]),
                readonly=row.get("lv_permissions", "").startswith("read-only"),
            )
    return vgs, lvs


def resolve(targets, select=None):
    """LVs that real LVM resolves ``targets`` (VG, VG/LV, /dev/..., @tag) to."""
    args = ["-o", "lv_uuid,vg_name,lv_name,lv_tags,lv_size,vg_extent_size",
            "--units", "b", "--nosuffix"]
    if select is not None:
        args += ["--select", select]
    data, _proc = report("lvs", [*args, *targets])
    if data is None:
        return None
    found = []
    for part in data.get("report", []):
        for row in part.get("lv", []):
            found.append(LV(row["lv_uuid"], row["vg_name"], row["lv_name"],
                            int(row["lv_size"]), _split_tags(row["lv_tags"]),
                            int(row["vg_extent_size"])))
    return found


# --- loop devices --------------------------------------------------------

def loop_map():
    """{backing file: [/dev/loopN, ...]} for every attached loop device."""
    found = {}
    try:
        names = os.listdir("/sys/block")
    except OSError:
        names = []
    for name in names:
        if not name.startswith("loop"):
            continue
        try:
            with open(f"/sys/block/{name}/loop/backing_file", encoding="utf-8") as fh:
                back = fh.read().rstrip("\n")
        except OSError:
            continue
        if back.endswith(" (deleted)"):
            back = back[: -len(" (deleted)")]
        found.setdefault(back, []).append(f"/dev/{name}")
    for devs in found.values():
        devs.sort(key=lambda d: int(d[len("/dev/loop"):]))
    return found


def _sh(argv):
    proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise ShimError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def loop_sectors(dev):
    with open(f"/sys/block/{os.path.basename(dev)}/size", encoding="utf-8") as fh:
        return int(fh.read())


def loop_readonly(dev):
    with open(f"/sys/block/{os.path.basename(dev)}/ro", encoding="utf-8") as fh:
        return fh.read().strip() == "1"


def loop_rdev(dev):
    return os.makedev(7, int(os.path.basename(dev)[len("loop"):]))


def opened(devs):
    """The subset of loop devices ``devs`` that a process holds open or is mounted.

    Real LVM refuses to remove or deactivate an LV whose device is open; this
    is the same question asked of the loop device (one pass over /proc).
    """
    by_rdev = {loop_rdev(d): d for d in devs}
    found = set()
    if not by_rdev:
        return found
    me = str(os.getpid())
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or pid == me:
            continue
        fddir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fddir)
        except OSError:
            continue
        for fd in fds:
            try:
                st = os.stat(f"{fddir}/{fd}")
            except OSError:
                continue
            if stat.S_ISBLK(st.st_mode) and st.st_rdev in by_rdev:
                found.add(by_rdev[st.st_rdev])
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as fh:
            for line in fh:
                major, minor = line.split()[2].split(":")
                dev = by_rdev.get(os.makedev(int(major), int(minor)))
                if dev:
                    found.add(dev)
    except OSError:
        pass
    return found


def _remove_link(vg, lv):
    link = link_path(vg, lv)
    if os.path.lexists(link):
        os.unlink(link)
    with suppress(OSError):  # real LVM removes /dev/VG with its last LV
        os.rmdir(f"/dev/{vg}")


def _set_link(vg, lv, dev):
    os.makedirs(f"/dev/{vg}", mode=0o755, exist_ok=True)
    link = link_path(vg, lv)
    target = f"../{os.path.basename(dev)}"
    try:
        if os.readlink(link) == target:
            return
    except OSError:
        pass
    tmp = f"/dev/{vg}/.{lv}.pvlab-tmp"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _linked_loop(vg, lv):
    """/dev/loopN that /dev/VG/LV points to (None if it is no such link)."""
    try:
        target = os.readlink(link_path(vg, lv))
    except OSError:
        return None
    if not re.fullmatch(r"(\.\./|/dev/)loop[0-9]+", target):
        return None
    return "/dev/" + os.path.basename(target)


def deactivate(vg, lv, path, loops):
    """Remove /dev/VG/LV and detach every loop device over ``path``."""
    _remove_link(vg, lv)
    for dev in loops.pop(path, []):
        _sh(["losetup", "-d", dev])


def activate(vg, lv, path, loops, readonly=False):
    """Loop device over ``path`` (reused if attached) and /dev/VG/LV -> it.

    Read-only exactly when the LV's permission is ``r``. (A loop device keeps
    a ``blockdev --setro`` across detach and re-attach: never inherit one.)
    """
    devs = loops.get(path) or []
    linked = _linked_loop(vg, lv)
    dev = linked if linked in devs else (devs[0] if devs else None)
    if dev is None:
        dev = _sh(["losetup", "--find", "--show", path]).strip()
        loops[path] = [dev]
    size = os.path.getsize(path)
    if loop_sectors(dev) * 512 != size:
        _sh(["losetup", "--set-capacity", dev])
    if loop_readonly(dev) != readonly:
        _sh(["blockdev", "--setro" if readonly else "--setrw", dev])
    _set_link(vg, lv, dev)
    return dev


def _new_sparse(path, size):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.truncate(size)


def _flush(devs):
    """Push what was written to the loop devices into the backing file."""
    for dev in devs:
        fd = os.open(dev, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def copy_snapshot(host, origin_path, path, loops):
    """Point-in-time copy of the origin's data (sparse), then into place."""
    if not os.path.exists(origin_path):
        raise ShimError(f"origin data {origin_path} missing")
    _flush(loops.get(origin_path, []))
    os.makedirs(host.tmpdir, exist_ok=True)
    tmp = os.path.join(host.tmpdir, os.path.basename(path) + f".{os.getpid()}")
    _sh(["cp", "--sparse=always", origin_path, tmp])
    _overlay_drbd_live_data(loops.get(origin_path, []), tmp)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.replace(tmp, path)


def _overlay_drbd_live_data(origin_loops, tmp):
    """If the origin is this host's backing LV of a DRBD shim resource whose
    /dev/drbdN currently maps another block device (the peer's LV while
    connected, see drbdshim/README.md "Bytes"), copy that live data area over
    the copy: real DRBD writes every replicated block into the backing LV, so
    a snapshot of it on the Secondary holds the replica's current content."""
    rdevs = [[7, int(os.path.basename(dev)[len("loop"):])] for dev in origin_loops]
    if not rdevs:
        return
    try:
        from drbdshim import devices as drbd_devices
        from drbdshim import kernel as drbd_kernel
        from drbdshim import state as drbd_state
    except ImportError:
        return
    me = os.uname().nodename
    for res in drbd_state.all_names():
        with drbd_state.locked(res) as box:
            st = box["state"]
            hs = (st or {}).get("hosts", {}).get(me)
            if not hs or hs.get("backing_rdev") not in rdevs:
                continue
            drbd_kernel.settle(st)  # a resync whose time has come ends first
            if hs["map"] and hs["map"] != hs["backing_rdev"]:
                _copy_head(drbd_devices.node_for(hs["map"]), tmp, hs["size"] * 512,
                           [drbd_devices.node_for([7, h["loop"]])
                            for h in st["hosts"].values() if h.get("loop") is not None])
            return


def _copy_head(src, dst_file, length, flush, chunk=1 << 20):
    """dst_file[:length] = src[:length], after flushing the devices in ``flush``."""
    _flush(flush + [src])
    with open(src, "rb") as fin, open(dst_file, "r+b") as fout:
        pos = 0
        while pos < length:
            data = fin.read(min(chunk, length - pos))
            if not data:
                break
            fout.write(data)
            pos += len(data)


# --- reconcile -----------------------------------------------------------

def sync(host, activate_req=None, snapshot_of=None, new_active=True,
         removed_origins_cascade=True):
    """Make files, loop devices and /dev links follow the LVM metadata.

    ``activate_req``: {uuid: bool} requested by ``lvchange -a``.
    ``snapshot_of``: (vg, origin) whose data a NEW emulated snapshot LV of
    that origin gets copied from (set by the lvcreate --snapshot path).
    ``new_active``: whether LVs new to the shim start active (``lvcreate -an``).
    Returns a list of warnings (already printed on stderr); they do not fail
    the command (a broken emulated snapshot must not fail every later one).
    """
    activate_req = activate_req or {}
    problems = []
    vgs, meta = metadata()
    state = host.load_state()
    known = state or {}
    loops = loop_map()

    # Emulated snapshots die with their origin (lvremove of an origin
    # removes its snapshots in real LVM too).
    if removed_origins_cascade:
        gone = {(r["vg"], r["lv"]) for u, r in known.items()
                if r["vg"] in vgs and u not in meta}
        orphans = [lv for lv in meta.values() if lv.origin and (lv.vg, lv.origin) in gone
                   and (lv.vg, lv.origin) not in {(m.vg, m.name) for m in meta.values()}]
        if orphans:
            proc = run_real("lvremove", ["--yes", *[f"{o.vg}/{o.name}" for o in orphans]])
            sys.stdout.write(proc.stdout)
            sys.stderr.write(proc.stderr)
            vgs, meta = metadata()

    new_state = {u: r for u, r in known.items() if r["vg"] not in vgs}

    # 1. removed LVs
    for uuid, rec in known.items():
        if rec["vg"] in vgs and uuid not in meta:
            path = host.data_path(rec["vg"], rec["lv"])
            if _linked_loop(rec["vg"], rec["lv"]) or path in loops:
                deactivate(rec["vg"], rec["lv"], path, loops)
            if not any(m.vg == rec["vg"] and m.name == rec["lv"] for m in meta.values()):
                _unlink(path)

    # 2. renamed LVs: move file and link, keep the loop device (and openers)
    for uuid, lv in meta.items():
        rec = known.get(uuid)
        if not rec or (rec["vg"], rec["lv"]) == (lv.vg, lv.name):
            continue
        old = host.data_path(rec["vg"], rec["lv"])
        new = host.data_path(lv.vg, lv.name)
        dev = _linked_loop(rec["vg"], rec["lv"])
        _remove_link(rec["vg"], rec["lv"])
        if os.path.exists(old):
            if os.path.exists(new):
                deactivate(lv.vg, lv.name, new, loops)
                _unlink(new)
            os.makedirs(os.path.dirname(new), exist_ok=True)
            os.replace(old, new)
            if old in loops:
                loops[new] = loops.pop(old)
            if dev and dev in loops.get(new, []):
                _set_link(lv.vg, lv.name, dev)
        _retag_snapshots(meta, rec["vg"], rec["lv"], lv.name)

    # 3. files and links no LV owns any more (killed runs, unshimmed commands)
    for vg in vgs:
        names = {lv.name for lv in meta.values() if lv.vg == vg}
        for stale in _listdir(os.path.join(host.lvdir, vg)):
            if stale not in names:
                path = host.data_path(vg, stale)
                deactivate(vg, stale, path, loops)
                _unlink(path)
        for stale in _listdir(f"/dev/{vg}"):
            if stale not in names and _linked_loop(vg, stale):
                _remove_link(vg, stale)

    # 4. create, resize, (de)activate
    for uuid, lv in sorted(meta.items(), key=lambda kv: kv[1].origin is not None):
        path = host.data_path(lv.vg, lv.name)
        rec = known.get(uuid)
        if rec is None and state is not None and os.path.exists(path):
            # a new LV under a name whose old data was never cleaned up
            deactivate(lv.vg, lv.name, path, loops)
            _unlink(path)
        if lv.origin:
            if not os.path.exists(path):
                if rec is None and snapshot_of == (lv.vg, lv.origin):
                    copy_snapshot(host, host.data_path(lv.vg, lv.origin), path, loops)
                else:
                    problems.append(f"WARNING: snapshot {lv.vg}/{lv.name} has no data "
                                    "(its creation was interrupted): remove it")
                    continue
        elif not os.path.exists(path):
            _new_sparse(path, lv.size)
        elif os.path.getsize(path) != lv.size:
            with open(path, "r+b") as fh:
                fh.truncate(lv.size)
        active = activate_req.get(uuid, rec["active"] if rec else new_active)
        if active:
            activate(lv.vg, lv.name, path, loops, readonly=lv.readonly)
        else:
            deactivate(lv.vg, lv.name, path, loops)
        new_state[uuid] = {"vg": lv.vg, "lv": lv.name, "active": active, "origin": lv.origin}

    host.save_state(new_state)
    for problem in problems:
        say(problem)
    return problems


def _retag_snapshots(meta, vg, old, new):
    """An origin was renamed: point its emulated snapshots' tag at the new name."""
    for lv in meta.values():
        if lv.vg == vg and lv.origin == old:
            run_real("lvchange", ["--deltag", SNAPSHOT_TAG + old,
                                  "--addtag", SNAPSHOT_TAG + new, f"{vg}/{lv.name}"])
            lv.tags = [t for t in lv.tags if t != SNAPSHOT_TAG + old] + [SNAPSHOT_TAG + new]


def _unlink(path):
    with suppress(FileNotFoundError):
        os.unlink(path)


def _listdir(path):
    try:
        return os.listdir(path)
    except OSError:
        return []
