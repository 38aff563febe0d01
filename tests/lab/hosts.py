"""One lab host: its private file tree, /dev, network links and libvirt daemons.

Everything here follows tests/lab/README.md. The product sees ordinary paths
(/machines, /etc/drbd.d, /etc/libvirt, /dev/<vg>/<lv>, ...); inside the host's
mount namespace they are bind mounts of ``/var/tmp/pvlab/<host>/root/...``.
"""

import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.lab import instance, locks, namespaces, sshd

REPO = Path(__file__).resolve().parents[2]
SHIMS = REPO / "tests" / "lab" / "shims"
DATA = Path("/var/tmp") / instance.name("pvlab")
# Loop device nodes per host: each LV and each DRBD device is one (bench: 200 VMs).
LOOP_NODES = 640
# libvirtd probes QEMU for 8 s on a cold start; its cache is valid across labs.
CAPS_CACHE = REPO / ".cache" / "libvirt-capabilities"
# The test guest (tests/guest), copied into each host's /var/lib/libvirt/boot;
# PVLAB_GUEST_DIR as for tests/guest/build.
GUEST = Path(os.environ.get("PVLAB_GUEST_DIR") or REPO / ".cache" / "guest")

# Paths each host gets privately (bind mounts): what the product uses, and
# /run, where daemons keep pid files and sockets.
PRIVATE_PATHS = (
    "/machines",
    "/etc/drbd.d",
    "/etc/lvm",
    "/etc/libvirt",
    "/run",
    "/var/lib/libvirt",
    "/var/log/libvirt",
    "/var/cache/libvirt",
    "/var/lib/pairvm",
    "/var/cache/pairvm",
    "/etc/salt",
    "/var/lib/drbd",
    "/etc/network",
    "/etc/bash_completion.d",
    "/root/.ssh",
    "/usr/local/sbin",
)

# Mount points a lab had to create in the real root, removed again by the last lab to go
# (one file for every lab instance: another lab may still mount its hosts' paths on them,
# and removing a directory another mount namespace mounts on detaches that mount). Every
# process that builds a lab holds MOUNTPOINTS_LOCK shared.
CREATED_MOUNTPOINTS_FILE = Path("/var/tmp/pvlab-created-mountpoints")
MOUNTPOINTS_LOCK = Path("/run/lock/pvlab-mountpoints.lock")

LIBVIRTD_CONF = """\
# pvlab: libvirtd of a lab host (private /run/libvirt in the host's namespace)
unix_sock_group = "root"
unix_sock_rw_perms = "0770"
auth_unix_rw = "none"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
"""

QEMU_CONF = """\
# pvlab: no cgroups, no per-guest mount namespace, no security driver:
# the lab host is itself a namespace on a machine without systemd.
security_driver = "none"
namespaces = [ ]
cgroup_controllers = [ ]
user = "root"
group = "root"
vnc_listen = "127.0.0.1"
"""

VIRTLOGD_CONF = 'log_outputs = "3:file:/var/log/libvirt/virtlogd.log"\n'

DEV_NODES = (
    ("null", "c", 1, 3), ("zero", "c", 1, 5), ("full", "c", 1, 7),
    ("random", "c", 1, 8), ("urandom", "c", 1, 9), ("tty", "c", 5, 0),
    ("net/tun", "c", 10, 200), ("kvm", "c", 10, 232), ("loop-control", "c", 10, 237),
)


def lab_environ(host):
    """The environment of every process started inside a lab host."""
    return {
        "PATH": f"{SHIMS}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:{REPO}/.venv/bin",
        "PVLAB_DATA": str(DATA),
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "HOSTNAME": host,
    }


def _dev_script():
    lines = [
        "mount -t tmpfs -o mode=0755,size=16m pvlab-dev /dev",
        "mkdir -p /dev/net /dev/pts /dev/shm",
        "mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts /dev/pts",
        "ln -s pts/ptmx /dev/ptmx",
        "mount -t tmpfs -o mode=1777 shm /dev/shm",
        "ln -s /proc/self/fd /dev/fd",
        "ln -s /proc/self/fd/0 /dev/stdin",
        "ln -s /proc/self/fd/1 /dev/stdout",
        "ln -s /proc/self/fd/2 /dev/stderr",
    ]
    for name, kind, major, minor in DEV_NODES:
        lines.append(f"mknod -m 0666 /dev/{name} {kind} {major} {minor}")
    lines.append(
        f"i=0; while [ $i -lt {LOOP_NODES} ]; do "
        "mknod -m 0660 /dev/loop$i b 7 $i; i=$((i+1)); done"
    )
    return lines


def setup_script(host, root):
    """Shell run once inside the host's new mount+UTS namespaces."""
    lines = [f"hostname {shlex.quote(host)}", "mount -t sysfs sysfs /sys"]
    lines += _dev_script()
    for path in PRIVATE_PATHS:
        lines.append(f"mount --bind {shlex.quote(str(root) + path)} {shlex.quote(path)}")
    return "\n".join(lines) + "\n"


def _ensure_mountpoints():
    locks.share(MOUNTPOINTS_LOCK)
    created = []
    for path in PRIVATE_PATHS:
        if not os.path.isdir(path):
            os.makedirs(path, exist_ok=True)  # another lab instance may make it meanwhile
            created.append(path)
    if created:
        with open(CREATED_MOUNTPOINTS_FILE, "a", encoding="utf-8") as fh:
            fh.writelines(p + "\n" for p in created)


def remove_created_mountpoints():
    """Remove the empty directories the labs had to create in the real root, once no
    lab of any instance is left: none is being built (MOUNTPOINTS_LOCK) or is up (its
    network namespaces; a lab made by ``python -m tests.lab up`` outlives its process)."""
    if not CREATED_MOUNTPOINTS_FILE.exists():
        return
    if locks.alone(MOUNTPOINTS_LOCK) and not namespaces.any_lab_netns():
        for path in reversed(CREATED_MOUNTPOINTS_FILE.read_text().split()):
            try:
                os.rmdir(path)
            except OSError:
                pass
        CREATED_MOUNTPOINTS_FILE.unlink()
    locks.share(MOUNTPOINTS_LOCK)  # back to shared: other labs may be built meanwhile


def _copy_tree(src, dst):
    if src.is_dir():
        shutil.copytree(src, dst, dirs_exist_ok=True)


@dataclass
class LabHost:
    """A lab host: name, addresses and the way to run commands inside it."""

    name: str
    admin_ip: str
    replication_ip: str

    @property
    def dir(self):
        return DATA / self.name

    @property
    def root(self):
        return self.dir / "root"

    def argv(self, argv):
        """Wrap argv so that it runs inside this host, with the lab environment."""
        env = [f"{k}={v}" for k, v in lab_environ(self.name).items()]
        return namespaces.nsenter_argv(self.name) + ["env", "-i", *env, *argv]

    def run(self, argv, check=True, input=None, timeout=120):
        """Run argv inside this host; returns CompletedProcess (text)."""
        result = subprocess.run(
            self.argv(argv), input=input, capture_output=True, text=True,
            timeout=timeout, check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"[{self.name}] {' '.join(argv)} failed (rc {result.returncode}):\n"
                f"{result.stdout}{result.stderr}"
            )
        return result

    # --- creation -------------------------------------------------------

    def create(self):
        """Private tree, config files and namespaces of this host."""
        for path in PRIVATE_PATHS:
            (self.root / path.lstrip("/")).mkdir(parents=True, exist_ok=True)
        self._write_libvirt_config()
        _ensure_mountpoints()
        namespaces.create_host_namespaces(self.name, setup_script(self.name, self.root))

    def _write_libvirt_config(self):
        boot = self.root / "var/lib/libvirt/boot"
        boot.mkdir(parents=True, exist_ok=True)
        for name in ("vmlinuz", "initrd.img"):
            if (GUEST / name).exists():
                shutil.copy(GUEST / name, boot / f"pairvm-guest-{name}")
        etc = self.root / "etc/libvirt"
        (etc / "libvirtd.conf").write_text(LIBVIRTD_CONF)
        (etc / "qemu.conf").write_text(QEMU_CONF)
        (etc / "virtlogd.conf").write_text(VIRTLOGD_CONF)
        for sub in ("var/lib/libvirt/qemu", "var/log/libvirt/qemu", "var/cache/libvirt/qemu"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def configure_links(self):
        """Addresses on this host's admin and replication links, br0 up."""
        ns = namespaces.netns_name(self.name)
        for argv in (
            ["ip", "-n", ns, "addr", "replace", f"{self.admin_ip}/24", "dev", "eth0"],
            ["ip", "-n", ns, "addr", "replace", f"{self.replication_ip}/24", "dev", "eth1"],
            ["ip", "-n", ns, "link", "set", "eth0", "up"],
            ["ip", "-n", ns, "link", "set", "eth1", "up"],
            ["ip", "-n", ns, "link", "set", "pub0", "master", "br0"],
            ["ip", "-n", ns, "link", "set", "pub0", "up"],
            ["ip", "-n", ns, "link", "set", "br0", "up"],
        ):
            namespaces.sh(argv)

    # --- libvirt ---------------------------------------------------------

    def start_libvirt(self, timeout=30):
        """Start virtlogd and libvirtd inside the host; wait until virsh answers.

        They run in the foreground as children of this process, so that they
        are reaped when stopped (PID 1 of the machine does not reap orphans).
        """
        caps = self.root / "var/cache/libvirt/qemu/capabilities"
        _copy_tree(CAPS_CACHE, caps)
        self.daemons = [*getattr(self, "daemons", []), self._spawn("virtlogd")]
        self.start_libvirtd(timeout)
        _copy_tree(caps, CAPS_CACHE)

    def _spawn(self, *argv):
        log = open(self.dir / "daemons.log", "ab")  # noqa: SIM115 - lives as long as the daemon
        return subprocess.Popen(self.argv(list(argv)), stdout=log, stderr=log, start_new_session=True)

    def start_libvirtd(self, timeout=30):
        """(Re)start libvirtd (its guests' QEMU processes live on without it); wait for virsh."""
        self.daemons = [*getattr(self, "daemons", []), self._spawn("libvirtd")]
        deadline = time.monotonic() + timeout
        while True:
            probe = self.run(["virsh", "-c", "qemu:///system", "version"], check=False)
            if probe.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"[{self.name}] libvirtd did not answer: {probe.stderr}")
            time.sleep(0.2)

    def kill_libvirtd(self):
        """SIGKILL libvirtd, as a crash would (a fault test); start_libvirtd brings it back."""
        for proc in [p for p in self.daemons if p.args[-1] == "libvirtd"]:
            proc.kill()
            proc.wait()
            self.daemons.remove(proc)

    def start_sshd(self, timeout=15):
        """A real sshd on the host's admin address, as a production host has: the peer
        reaches it with root's key (pairvm.host.ssh sets the trust up) for a live migration.
        Its sessions get the lab's PATH (the shims first), as every lab process does."""
        env = lab_environ(self.name)
        conf = sshd.write_config(self.dir / "sshd_config", self.admin_ip, "/etc/ssh/ssh_host_ed25519_key",
                                 extra=("PermitRootLogin prohibit-password",
                                        f"SetEnv PATH={env['PATH']} PVLAB_DATA={env['PVLAB_DATA']}"))
        self.daemons = [*getattr(self, "daemons", []),
                        sshd.start(self, conf, self.dir / "sshd.log", self.admin_ip, timeout=timeout)]

    def stop_libvirt(self):
        """Destroy every domain, then stop the daemons (libvirtd, virtlogd, sshd)."""
        listing = self.run(["virsh", "-c", "qemu:///system", "list", "--name"], check=False)
        for dom in listing.stdout.split():
            self.run(["virsh", "-c", "qemu:///system", "destroy", dom], check=False)
        sshd.stop(*reversed(getattr(self, "daemons", [])))  # the same for every foreground daemon
        self.daemons = []
