"""The kernel lab's block proxy: a kernel-lab host's /dev/drbdN and /dev/VG/LV.

The product opens block devices itself on a few data paths: ``pairvm.image``
writes the image onto ``/dev/drbdN`` (Python's ``open``, or ``qemu-img
convert``), ``pairvm.restore`` writes a backup onto it (``os.open``), and
``pairvm.backup`` reads its snapshot ``/dev/VG/<vm>-backup`` (``pv``). In a
kernel-lab host those paths must reach the storage guest's **real** devices,
so a FUSE file system stands in the host's private ``/dev`` (``klab.py``
links ``/dev/drbdN``, ``/dev/here`` and ``/dev/there`` into it): every file
is one of the guest's block devices, every read and write travels over the
guest's block channel (a second virtio-serial port, served by ``init``) to
``dd`` on that device, O_DIRECT. Opening answers as the guest's device does
(a Secondary's ``/dev/drbdN``: EMEDIUMTYPE, as real DRBD 8.4).

I/O goes in aligned chunks: reads fetch whole chunks (kept until the next
write or open), writes collect in chunks that go to the guest when full, on
``flush``/``fsync``/``close`` (whose error the writer sees), or when too many
are pending; a partly written chunk is read first and patched.

    python -m tests.kernel.blockfs HOST MOUNTPOINT DATA   (in the host's mount namespace;
                                                           DATA only names the lab for clean())
"""

import errno
import os
import socket
import stat
import sys
import threading
import time

from fuse import FUSE, FuseOSError, Operations

DATA = os.environ.get("PVKERNEL_DATA", "/var/tmp/pvkernel")
CHUNK = 4 << 20
MAX_PENDING = 4  # chunks kept before they are written out
DIRS = ("here", "there")


class ChannelError(OSError):
    pass


class BlockChannel:
    """Requests on the guest's block channel (``DATA/<host>/blk.sock``), one at a time."""

    def __init__(self, host, timeout=120):
        self.path, self.timeout = os.path.join(DATA, host, "blk.sock"), timeout
        self.lock, self.sock, self.reader = threading.Lock(), None, None

    def _connect(self):
        """Connect, then resync: whatever an earlier, broken exchange left in the guest's
        answer is read and dropped up to the echo of a fresh token."""
        if self.sock is None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(self.timeout)
            self.sock.connect(self.path)
            self.reader = self.sock.makefile("rb")
            token = os.urandom(8).hex()
            self.sock.sendall(f"SYNC {token}\n".encode())
            while self.reader.readline().rstrip(b"\n") != f"SYNCED {token}".encode():
                pass

    def request(self, line, payload=b"", then=None):
        """(True, n, what follows) or (False, message, None); ``then``: what follows an
        OK n: ``"bytes"`` (n bytes) or ``"lines"`` (n lines), else nothing. A request whose
        exchange failed (the socket, a garbled answer) is sent once more on a new, resynced
        connection: every request is idempotent (a WRITE writes the same bytes again)."""
        try:
            return self._request(line, payload, then)
        except ChannelError as exc:
            log(f"{line}: {exc}; once more on a new connection")
            return self._request(line, payload, then)

    def _request(self, line, payload, then):
        with self.lock:
            try:
                self._connect()
                self.sock.sendall(line.encode() + b"\n" + payload)
                head = self.reader.readline().decode(errors="replace").rstrip("\n")
                kind, _, rest = head.partition(" ")
                if kind == "ERR":
                    log(f"{line}: {rest}")
                    return False, rest, None
                if kind != "OK":
                    raise ValueError(f"unexpected answer {head[:80]!r}")
                count = int(rest)
                if then == "bytes":
                    return True, count, self._exactly(count)
                if then == "lines":
                    return True, count, [self.reader.readline().decode().rstrip("\n") for _ in range(count)]
                return True, count, None
            except (OSError, ValueError) as exc:
                self.close()
                raise ChannelError(errno.EIO, f"block channel: {exc}") from exc

    def _exactly(self, count):
        data = self.reader.read(count)
        if len(data) != count:
            raise OSError(f"{len(data)} of {count} bytes")
        return data

    def close(self):
        if self.sock is not None:
            self.sock.close()
        self.sock = self.reader = None


def log(message):
    """A line in the proxy's log (its stderr: ``DATA/<host>/blockfs.log``)."""
    sys.stderr.write(f"{time.strftime('%H:%M:%S')} blockfs: {message}\n")
    sys.stderr.flush()


def _errno(message):
    if "Wrong medium type" in message:
        return errno.EMEDIUMTYPE
    if "Read-only" in message:
        return errno.EROFS
    if "No such" in message:
        return errno.ENOENT
    return errno.EIO


class Pending:
    """What was written into one chunk and not sent yet: the bytes and the ranges covered."""

    def __init__(self):
        self.data, self.ranges = bytearray(CHUNK), []

    def put(self, offset, data):
        self.data[offset:offset + len(data)] = data
        ranges = sorted([*self.ranges, (offset, offset + len(data))])
        merged = [ranges[0]]
        for start, end in ranges[1:]:
            if start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        self.ranges = merged

    def covers(self, length):
        return bool(self.ranges) and self.ranges[0][0] == 0 and self.ranges[0][1] >= length


class GuestDevices(Operations):
    """The guest's block devices as files: ``/drbdN``, ``/here/<lv>``, ``/there/<lv>``."""

    def __init__(self, channel):
        self.channel = channel
        self.pending = {}  # (path, chunk index): Pending
        self.cached = {}   # path: (chunk index, bytes), one chunk per file
        self.sizes = {}    # path: size in bytes, while it has pending writes
        self.handles = 0

    # --- what the guest has -----------------------------------------------------------

    def _call(self, line, payload=b"", then=None):
        ok, value, data = self.channel.request(line, payload, then)
        if not ok:
            raise FuseOSError(_errno(value))
        return value, data

    def _size(self, path):
        return self._call(f"SIZE /dev{path}")[0]

    def getattr(self, path, fh=None):
        now = time.time()
        if path == "/" or path.strip("/") in DIRS:
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2, "st_mtime": now, "st_ctime": now,
                    "st_atime": now}
        if path.count("/") > 2 or (path.count("/") == 2 and path.split("/")[1] not in DIRS):
            raise FuseOSError(errno.ENOENT)
        return {"st_mode": stat.S_IFREG | 0o600, "st_nlink": 1, "st_size": self._size(path),
                "st_mtime": now, "st_ctime": now, "st_atime": now}

    def readdir(self, path, fh):
        directory = "/dev" if path == "/" else f"/dev{path}"
        _, names = self._call(f"LIST {directory}", then="lines")
        if path == "/":
            names = [*DIRS, *(n for n in names if n.startswith("drbd") and n[4:].isdigit())]
        return [".", "..", *names]

    # --- opening and closing ------------------------------------------------------------

    def open(self, path, flags):
        mode = "r" if flags & os.O_ACCMODE == os.O_RDONLY else "w"
        self._call(f"OPEN /dev{path} {mode}")
        self.cached.pop(path, None)
        self.handles += 1
        return self.handles

    def truncate(self, path, length, fh=None):
        if length != self._size(path):
            raise FuseOSError(errno.EPERM)  # a block device keeps its size

    def flush(self, path, fh):
        self._write_out(path)

    def fsync(self, path, datasync, fh):
        self._write_out(path)

    def release(self, path, fh):
        self._write_out(path)
        self.cached.pop(path, None)

    # --- data ---------------------------------------------------------------------------

    def read(self, path, size, offset, fh):
        self._write_out(path)
        out = bytearray()
        while size > 0:
            index, within = divmod(offset, CHUNK)
            cached = self.cached.get(path)
            if cached is None or cached[0] != index:
                _, data = self._call(f"READ /dev{path} {index * CHUNK} {CHUNK}", then="bytes")
                cached = self.cached[path] = (index, data)
            piece = cached[1][within:within + size]
            if not piece:
                break  # the end of the device
            out += piece
            offset, size = offset + len(piece), size - len(piece)
        return bytes(out)

    def write(self, path, data, offset, fh):
        self.cached.pop(path, None)
        size, done = self._size_of_open(path), 0
        if offset + len(data) > size:
            raise FuseOSError(errno.ENOSPC)
        while done < len(data):
            index, within = divmod(offset + done, CHUNK)
            piece = data[done:done + CHUNK - within]
            chunk = self.pending.setdefault((path, index), Pending())
            chunk.put(within, piece)
            done += len(piece)
            if chunk.covers(min(CHUNK, size - index * CHUNK)):
                self._send(path, index, size)
        if len(self.pending) > MAX_PENDING:
            self._write_out(path)
        return len(data)

    def _size_of_open(self, path):
        if path not in self.sizes:
            self.sizes[path] = self._size(path)
        return self.sizes[path]

    def _send(self, path, index, size):
        chunk = self.pending.pop((path, index))
        length = min(CHUNK, size - index * CHUNK)
        if not chunk.covers(length):  # a partly written chunk: patch what the device holds
            _, old = self._call(f"READ /dev{path} {index * CHUNK} {length}", then="bytes")
            merged = bytearray(old)
            for start, end in chunk.ranges:
                merged[start:end] = chunk.data[start:end]
            chunk.data = merged
        self._call(f"WRITE /dev{path} {index * CHUNK} {length}", bytes(chunk.data[:length]))

    def _write_out(self, path):
        keys = sorted(index for p, index in self.pending if p == path)
        if keys:
            size = self._size_of_open(path)
            for index in keys:
                self._send(path, index, size)
        self.sizes.pop(path, None)


def main(host, mountpoint):
    os.makedirs(mountpoint, exist_ok=True)
    FUSE(GuestDevices(BlockChannel(host)), mountpoint, foreground=True, nothreads=True, direct_io=True,
         attr_timeout=0, entry_timeout=0, negative_timeout=0, fsname=f"pvkernel-{host}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
