"""The kernel lab: real DRBD 8.4 and LVM for the pair, in two TCG guests.

    lab = KernelLab().up()          # boots both storage guests in parallel
    lab.hosts["hostA"].guest(["lvs"])        # a command in hostA's guest
    lab.hosts["hostA"].run(["salt-call", ...])  # a process "on" hostA
    lab.down()                      # leaves nothing behind

A lab host is two things (tests/kernel/README.md):
* its **storage guest**: QEMU (TCG) booting Debian's generic kernel with the
  initramfs of ``tests/kernel/build``: virtio discs vda (PV of VG ``here``)
  and vdb (VG ``there``), a NIC on the replication link to the other guest,
  the host's ``/etc/drbd.d`` over 9p, a command channel (``channel.py``);
* its **host namespace** on this machine: mount + UTS + net namespaces held
  by a ``sleep`` process, hostname ``hostA``/``hostB``, private ``/machines``,
  ``/etc/drbd.d``, ``/etc/salt``, ``/run``, ``/var/lib/pairvm``, and
  ``tests/kernel/bin`` first on PATH: forwarders that run drbdadm,
  drbdsetup, drbdmeta, the LVM commands and blockdev in the guest.

Runtime files live under ``/var/tmp/pvkernel`` (never /var/tmp/pvlab, which
the namespace lab's clean-up deletes); ``/run/lock/pvkernel.lock`` keeps one
kernel lab per machine (its names and the link port are fixed).
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import channel  # noqa: E402

from tests.lab import locks  # noqa: E402

DATA = Path(channel.DATA)
GUEST = REPO / ".cache" / "kernel"
FORWARDERS = REPO / "tests" / "kernel" / "bin"
LOCK_PATH = Path("/run/lock/pvkernel.lock")
LINK_PORT = 47791          # the replication link: guest A listens, B connects
PV_MIB = 384
MARKER = "PVKERNEL-GUEST-READY"
PRIVATE_PATHS = ("/machines", "/etc/drbd.d", "/etc/salt", "/run", "/var/lib/pairvm")

def hold_lock():
    """One kernel lab per machine; a second run waits."""
    locks.hold(LOCK_PATH, "kernel lab")


def environ(host):
    """The environment of every process started in a kernel-lab host."""
    return {
        "PATH": f"{FORWARDERS}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:"
                f"{REPO}/.venv/bin",
        "PVKERNEL_DATA": str(DATA),
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "HOSTNAME": host,
    }


# A private /dev: the usual nodes, and the storage guest's block devices where
# the product looks for them (/dev/drbdN, /dev/VG/LV), links into the block
# proxy's mount /dev/pvk (blockfs.py, mounted once the namespace exists).
NS_SETUP = r"""
set -e
hostname "$1"
for path in {paths}; do mount --bind "$2$path" "$path"; done
mount -t tmpfs -o mode=0755,size=8m pvkernel-dev /dev
mkdir /dev/pts /dev/shm /dev/pvk
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts /dev/pts
mount -t tmpfs -o mode=1777 shm /dev/shm
ln -s pts/ptmx /dev/ptmx
ln -s /proc/self/fd /dev/fd
ln -s /proc/self/fd/0 /dev/stdin; ln -s /proc/self/fd/1 /dev/stdout; ln -s /proc/self/fd/2 /dev/stderr
mknod -m 0666 /dev/null c 1 3; mknod -m 0666 /dev/zero c 1 5; mknod -m 0666 /dev/full c 1 7
mknod -m 0666 /dev/random c 1 8; mknod -m 0666 /dev/urandom c 1 9; mknod -m 0666 /dev/tty c 5 0
mknod -m 0600 /dev/fuse c 10 229
for vg in here there; do ln -s pvk/$vg /dev/$vg; done
n=0; while [ $n -lt {minors} ]; do ln -s pvk/drbd$n /dev/drbd$n; n=$((n+1)); done
ip link set lo up
echo ready
exec sleep 86400
"""
DRBD_MINORS = 16  # /dev/drbd0..15 in a host: the tier's VMs use the first few


@dataclass
class KernelHost:
    name: str
    replication_ip: str
    mac: str
    procs: dict = field(default_factory=dict)

    @property
    def dir(self):
        return DATA / self.name

    @property
    def root(self):
        return self.dir / "root"

    # --- the storage guest -------------------------------------------------

    def qemu_argv(self, link):
        d = self.dir
        return [
            "qemu-system-x86_64", "-name", f"pvkernel-{self.name}", "-accel", "tcg",
            "-m", "512", "-smp", "1", "-no-reboot", "-display", "none", "-monitor", "none",
            "-nodefaults", "-serial", f"file:{d}/console.log",
            "-kernel", str(GUEST / "vmlinuz"), "-initrd", str(GUEST / "initrd.img"),
            "-append", f"console=ttyS0 quiet panic=-1 pvk.hostname={self.name} "
                       f"pvk.ip={self.replication_ip}/24",
            "-drive", f"file={d}/pv-here.img,format=raw,if=virtio,cache=unsafe",
            "-drive", f"file={d}/pv-there.img,format=raw,if=virtio,cache=unsafe",
            "-netdev", f"socket,id=rep,{link}=127.0.0.1:{LINK_PORT}",
            "-device", f"virtio-net-pci,netdev=rep,mac={self.mac}",
            "-virtfs", f"local,path={self.root}/etc/drbd.d,mount_tag=drbd,security_model=none",
            "-virtfs", f"local,path={self.root}/var/lib/pairvm,mount_tag=pairvm,security_model=none",
            "-device", "virtio-serial-pci",
            "-chardev", f"socket,id=cmd,path={d}/cmd.sock,server=on,wait=off",
            "-device", "virtserialport,chardev=cmd,name=pvk.cmd",
            "-chardev", f"socket,id=blk,path={d}/blk.sock,server=on,wait=off",
            "-device", "virtserialport,chardev=blk,name=pvk.blk",
        ]

    def boot(self, link):
        for path in PRIVATE_PATHS:
            (self.root / path.lstrip("/")).mkdir(parents=True, exist_ok=True)
        for vg in ("here", "there"):
            with open(self.dir / f"pv-{vg}.img", "wb") as fh:
                fh.truncate(PV_MIB << 20)
        log = open(self.dir / "qemu.log", "wb")  # noqa: SIM115 - lives as long as QEMU
        self.procs["qemu"] = subprocess.Popen(self.qemu_argv(link), stdout=log, stderr=log,
                                              stdin=subprocess.DEVNULL, start_new_session=True)
        self.booted_at = time.monotonic()

    def wait_ready(self, timeout=90):
        """Seconds from QEMU's start until the guest's init announced itself."""
        console = self.dir / "console.log"
        deadline = self.booted_at + timeout
        while time.monotonic() < deadline:
            if console.exists() and MARKER in console.read_text(errors="replace"):
                return time.monotonic() - self.booted_at
            if self.procs["qemu"].poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"storage guest {self.name} did not boot:\n"
                           f"{(self.dir / 'qemu.log').read_text(errors='replace')}\n"
                           f"{console.read_text(errors='replace')[-3000:] if console.exists() else ''}")

    def guest(self, argv, check=True, timeout=120):
        """Run argv in the storage guest: (rc, stdout, stderr) as text."""
        rc, out, err = channel.run(self.name, argv, timeout)
        out, err = out.decode(errors="replace"), err.decode(errors="replace")
        if check and rc != 0:
            raise RuntimeError(f"[{self.name} guest] {argv}: rc {rc}\n{out}{err}")
        return rc, out, err

    def guest_sh(self, script, check=True, timeout=120):
        rc, out, err = channel.run_script(self.name, script, timeout)
        out, err = out.decode(errors="replace"), err.decode(errors="replace")
        if check and rc != 0:
            raise RuntimeError(f"[{self.name} guest] {script!r}: rc {rc}\n{out}{err}")
        return out

    # --- the host namespace ---------------------------------------------------

    def enter(self):
        for path in PRIVATE_PATHS:
            os.makedirs(path, exist_ok=True)   # mount points (empty dirs, kept)
        setup = NS_SETUP.replace("{paths}", " ".join(PRIVATE_PATHS)).replace("{minors}", str(DRBD_MINORS))
        proc = subprocess.Popen(
            ["unshare", "--mount", "--uts", "--net", "--propagation", "private",
             "sh", "-c", setup, "sh", self.name, str(self.root)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            text=True, start_new_session=True)
        line = proc.stdout.readline()
        if line.strip() != "ready":
            proc.kill()
            raise RuntimeError(f"kernel lab host {self.name}: {proc.stderr.read()}")
        self.procs["ns"] = proc
        (self.dir / "ns.pid").write_text(f"{proc.pid}\n")  # for clean() after a killed run
        self.mount_block_proxy()

    def mount_block_proxy(self, timeout=20):
        """The block proxy (blockfs.py) on /dev/pvk, in the host's mount namespace only: it
        goes with the namespace. Its argv names DATA, so clean() finds it after a killed run."""
        pid = str(self.procs["ns"].pid)
        log = open(self.dir / "blockfs.log", "wb")  # noqa: SIM115 - lives as long as the proxy
        self.procs["blockfs"] = subprocess.Popen(
            ["nsenter", "-t", pid, "-m", "--", sys.executable, "-m", "tests.kernel.blockfs", self.name,
             "/dev/pvk", str(DATA)],
            env={**os.environ, "PVKERNEL_DATA": str(DATA), "PYTHONPATH": str(REPO)}, stdout=log,
            stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self._proxy_mounted(pid):
            if self.procs["blockfs"].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"block proxy of {self.name} did not mount: "
                                   f"{(self.dir / 'blockfs.log').read_text(errors='replace')}")
            time.sleep(0.05)

    @staticmethod
    def _proxy_mounted(pid):
        with open(f"/proc/{pid}/mountinfo", encoding="utf-8") as fh:
            return any(line.split()[4] == "/dev/pvk" and " - fuse" in line for line in fh)

    def argv(self, argv):
        env = [f"{k}={v}" for k, v in environ(self.name).items()]
        pid = str(self.procs["ns"].pid)
        return ["nsenter", "-t", pid, "-m", "-u", "-n", "--", "env", "-i", *env, *argv]

    def run(self, argv, check=True, input=None, timeout=300):
        proc = subprocess.run(self.argv(argv), input=input, capture_output=True, text=True,
                              timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise RuntimeError(f"[{self.name}] {' '.join(argv)}: rc {proc.returncode}\n"
                               f"{proc.stdout}{proc.stderr}")
        return proc

    def stop(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self.procs.clear()


HOSTS = (
    ("hostA", "10.78.0.11", "52:54:00:78:00:11"),
    ("hostB", "10.78.0.12", "52:54:00:78:00:12"),
)


class KernelLab:
    def __init__(self):
        self.hosts = {name: KernelHost(name, ip, mac) for name, ip, mac in HOSTS}
        self.boot_seconds = {}

    def up(self):
        """Boot both guests in parallel, make the volume groups, enter the hosts."""
        clean()
        for host in self.hosts.values():
            host.dir.mkdir(parents=True, exist_ok=True)
        a, b = self.hosts["hostA"], self.hosts["hostB"]
        try:
            a.boot("listen")
            _wait_listening(LINK_PORT)
            b.boot("connect")
            for host in self.hosts.values():
                self.boot_seconds[host.name] = host.wait_ready()
            for host in self.hosts.values():
                host.guest_sh("pvcreate -q /dev/vda /dev/vdb && vgcreate -q here /dev/vda"
                              " && vgcreate -q there /dev/vdb")
                host.enter()
        except BaseException:
            self.down()
            raise
        return self

    def down(self):
        for host in self.hosts.values():
            host.stop()
        clean()


def _wait_listening(port, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"QEMU of hostA does not listen on 127.0.0.1:{port}")


# --- clean-up, also after a killed run (tests/lab status/clean call these) ------

def lab_processes():
    """(pid, args) of processes a kernel lab started: QEMU, the block proxies and the
    backup sshds name DATA on their command line; the namespace holders are in
    DATA/<host>/ns.pid."""
    found, holders = [], _holders()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                args = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
            with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
                zombie = fh.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            continue
        first = os.path.basename(args.split()[0]) if args else ""
        if not zombie and (int(pid) in holders or str(DATA) in args and (
                first in ("qemu-system-x86_64", "unshare", "sh") or first.startswith("sshd")
                or "tests.kernel.blockfs" in args)):
            found.append((int(pid), args))
    return found


def _holders():
    """Pids of the host namespaces' ``sleep`` holders (their argv names no lab path)."""
    pids = set()
    for path in DATA.glob("*/ns.pid"):
        try:
            pid = int(path.read_text())
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if fh.read().startswith(b"sleep\0"):
                    pids.add(pid)
        except (OSError, ValueError):
            continue
    return pids


def leftovers():
    """What a kernel lab left behind: human-readable lines (empty when clean)."""
    found = [f"kernel lab process {pid} {args[:100]}" for pid, args in lab_processes()]
    if DATA.exists():
        found.append(f"kernel lab directory {DATA}")
    return found


def clean():
    """Stop a kernel lab's processes and remove its files (one left by a killed run too)."""
    hold_lock()
    for pid, _ in lab_processes():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while lab_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    shutil.rmtree(DATA, ignore_errors=True)
