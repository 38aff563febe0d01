"""Block-device side of the DRBD shim.

* the size rules of DRBD 8.4 internal meta data (drbd_md_set_sector_offsets,
  drbd_get_max_capacity): data area = (capacity & ~7) - md_size_sect;
* the v08 meta data super block (big endian, at (capacity & ~7) - 8 sectors),
  read at attach and written back on every UUID/flag change, as the kernel's
  drbd_md_sync does, so the real ``drbdmeta dump-md``/``get-gi`` agree;
* ``/dev/drbdN``: a loop device (offset 0, sizelimit = data area) over a
  backing block device, its node made in the host's own /dev (reached from
  another namespace through ``/proc/<pid>/root``);
* openers of a loop device (what 8.4 reports as "Device is held open").
"""

import contextlib
import errno
import fcntl
import os
import stat
import struct
import subprocess

from . import state

SB = struct.Struct(">Q4QQQIIIiIiIIII")
MAGIC_08 = 0x83740267 + 4
UUID_JUST_CREATED = 4
MDF_CONSISTENT, MDF_PRIMARY_IND, MDF_CONNECTED_IND = 1, 2, 4
MDF_WAS_UP_TO_DATE, MDF_PEER_OUT_DATED, MDF_AL_CLEAN = 16, 32, 128
AL_SECT = 64  # al-stripes 1 x al-stripe-size 32k, the 8.4 default

BLKROSET = 0x125D
BLKGETSIZE64 = 0x80081272
BLKFLSBUF = 0x1261
LOOP_SET_STATUS64, LOOP_GET_STATUS64 = 0x4C04, 0x4C05
LOOP_INFO64 = struct.Struct("=QQQQQIIII64s64s32s2Q")


def md_size_sect(capacity):
    bm = ((capacity + 32767) & ~32767) >> 15
    return ((bm + 7) & ~7) + 8 + AL_SECT


def md_offset_sect(capacity):
    return (capacity & ~7) - 8


def max_data_sect(capacity):
    return max((capacity & ~7) - md_size_sect(capacity), 0)


def node_for(rdev):
    """A private node for a block device, usable from any mount namespace."""
    path = os.path.join(state.data_dir(), "nodes", f"b{rdev[0]}-{rdev[1]}")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        st = os.stat(path)
        if stat.S_ISBLK(st.st_mode) and st.st_rdev == os.makedev(*rdev):
            return path
        os.unlink(path)
    except FileNotFoundError:
        pass
    os.mknod(path, 0o600 | stat.S_IFBLK, os.makedev(*rdev))
    return path


def bdev_rdev(path):
    st = os.stat(path)
    if not stat.S_ISBLK(st.st_mode):
        return None
    return [os.major(st.st_rdev), os.minor(st.st_rdev)]


def capacity_sect(rdev):
    fd = os.open(node_for(rdev), os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END) >> 9
    finally:
        os.close(fd)


def read_md(rdev, capacity):
    """(la_size, [uuids], flags, magic) of the v08 super block, or None."""
    fd = os.open(node_for(rdev), os.O_RDONLY)
    try:
        raw = os.pread(fd, SB.size, md_offset_sect(capacity) * 512)
    finally:
        os.close(fd)
    f = SB.unpack(raw)
    if f[8] not in (MAGIC_08, MAGIC_08 + 1):
        return None
    return f[0], list(f[1:5]), f[7], f[8]


def write_md(rdev, capacity, la_size, uuids, flags):
    fd = os.open(node_for(rdev), os.O_RDWR)
    try:
        off = md_offset_sect(capacity) * 512
        f = list(SB.unpack(os.pread(fd, SB.size, off)))
        f[0] = la_size
        f[1:5] = [u & 0xFFFFFFFFFFFFFFFF for u in uuids]
        f[7] = flags
        os.pwrite(fd, SB.pack(*f), off)
        os.fsync(fd)
    finally:
        os.close(fd)


def move_md(rdev, old_cap, new_cap):
    """Internal meta data follows the end of a grown device (super block + AL
    copied, bitmap area zeroed), as drbd_determine_dev_size does."""
    if old_cap == new_cap:
        return
    fd = os.open(node_for(rdev), os.O_RDWR)
    try:
        old_off = md_offset_sect(old_cap) * 512
        blob = os.pread(fd, (AL_SECT + 8) * 512, old_off - AL_SECT * 512)
        new_md = md_size_sect(new_cap)
        new_off = md_offset_sect(new_cap) * 512
        bm_bytes = (new_md - 8 - AL_SECT) * 512
        os.pwrite(fd, bytes(bm_bytes), new_off - AL_SECT * 512 - bm_bytes)
        os.pwrite(fd, blob, new_off - AL_SECT * 512)
        f = list(SB.unpack(os.pread(fd, SB.size, new_off)))
        f[9], f[10], f[12] = new_md, -AL_SECT, -(new_md - 8)
        os.pwrite(fd, SB.pack(*f), new_off)
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_data(src_rdev, dst_rdev, sectors, chunk=1 << 20):
    """Make the first ``sectors`` of dst equal to src (only differing chunks
    are written)."""
    if src_rdev == dst_rdev:
        return
    total = sectors * 512
    sfd = os.open(node_for(src_rdev), os.O_RDONLY)
    dfd = os.open(node_for(dst_rdev), os.O_RDWR)
    try:
        pos = 0
        while pos < total:
            n = min(chunk, total - pos)
            data = os.pread(sfd, n, pos)
            if os.pread(dfd, n, pos) != data:
                os.pwrite(dfd, data, pos)
            pos += n
        os.fsync(dfd)
        with contextlib.suppress(OSError):
            fcntl.ioctl(dfd, BLKFLSBUF)
    finally:
        os.close(sfd)
        os.close(dfd)


# --- namespaces and /dev/drbdN ------------------------------------------------

def my_mntns():
    return str(os.stat("/proc/self/ns/mnt").st_ino)


def pid_in_mntns(mntns):
    """A process living in the mount namespace ``mntns`` (this one if it does)."""
    if mntns == my_mntns():
        return os.getpid()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        with contextlib.suppress(OSError):
            if str(os.stat(f"/proc/{pid}/ns/mnt").st_ino) == mntns:
                return int(pid)
    raise RuntimeError(f"no process left in mount namespace {mntns}")


def dev_dir_of(mntns):
    """/dev as seen in the mount namespace ``mntns``."""
    if mntns == my_mntns():
        return "/dev"
    return f"/proc/{pid_in_mntns(mntns)}/root/dev"


def make_node(mntns, minor, loop):
    """/dev/drbd<minor> -> loop device ``loop`` in that host's /dev."""
    path = os.path.join(dev_dir_of(mntns), f"drbd{minor}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    os.mknod(path, 0o660 | stat.S_IFBLK, os.makedev(7, loop))
    return path


def remove_node(mntns, minor):
    with contextlib.suppress(FileNotFoundError, RuntimeError):
        os.unlink(os.path.join(dev_dir_of(mntns), f"drbd{minor}"))


def loop_attach(backing_rdev, sectors):
    out = subprocess.run(
        ["losetup", "--find", "--show", "--sizelimit", str(sectors * 512),
         node_for(backing_rdev)],
        check=True, capture_output=True, text=True).stdout.strip()
    return int(out[len("/dev/loop"):])


def loop_detach(loop):
    subprocess.run(["losetup", "-d", node_for([7, loop])], check=False,
                   capture_output=True)


def loop_set_size(loop, sectors):
    fd = os.open(node_for([7, loop]), os.O_RDONLY)
    try:
        buf = bytearray(LOOP_INFO64.size)
        fcntl.ioctl(fd, LOOP_GET_STATUS64, buf)
        f = list(LOOP_INFO64.unpack(buf))
        f[4] = sectors * 512
        fcntl.ioctl(fd, LOOP_SET_STATUS64, LOOP_INFO64.pack(*f))
    finally:
        os.close(fd)


def set_readonly(loop, ro):
    """set_disk_ro(): a Secondary's device refuses writes."""
    fd = os.open(node_for([7, loop]), os.O_RDONLY)
    try:
        fcntl.ioctl(fd, BLKROSET, struct.pack("i", 1 if ro else 0))
    finally:
        os.close(fd)


def openers(loop):
    """Pids holding the loop device open (any namespace), or ["exclusive"]
    when it is mounted or claimed."""
    want = os.makedev(7, loop)
    found = []
    me = str(os.getpid())
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or pid == me:
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                st = os.stat(f"/proc/{pid}/fd/{fd}")
                if stat.S_ISBLK(st.st_mode) and st.st_rdev == want:
                    found.append(int(pid))
                    break
    try:
        fd = os.open(node_for([7, loop]), os.O_RDONLY | os.O_EXCL)
        os.close(fd)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            found.append("exclusive")
    if os.listdir(f"/sys/block/loop{loop}/holders"):
        found.append("holder")
    return found


def backing_mtime(rdev):
    """mtime of the file behind a loop device (None if not a loop)."""
    if rdev[0] != 7:
        return None
    try:
        with open(f"/sys/block/loop{rdev[1]}/loop/backing_file", encoding="utf-8") as fh:
            return os.stat(fh.read().strip()).st_mtime_ns
    except OSError:
        return None
