"""The two-host lab: build it, tear it down, and clean up after a killed run.

    lab = Lab()            # hostA and hostB
    lab.up()               # namespaces, links, LVM, libvirtd in each host
    lab.hosts["hostA"].run(["virsh", "list"])
    lab.down()             # leaves nothing behind

``python -m tests.lab up|down|clean|status|shell HOST`` does the same by hand.
"""

import contextlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from tests.lab import hosts as hostlib
from tests.lab import instance, locks, namespaces
from tests.lab import lvm as lablvm
from tests.lab.hosts import DATA, LabHost

CONTROL_IP = "10.77.0.1"
# The demo pair, then a second pair that only the fleet tests build (Lab.extend).
HOSTS = (
    LabHost("hostA", admin_ip="10.77.0.11", replication_ip="10.78.0.11"),
    LabHost("hostB", admin_ip="10.77.0.12", replication_ip="10.78.0.12"),
    LabHost("hostC", admin_ip="10.77.0.13", replication_ip="10.78.0.13"),
    LabHost("hostD", admin_ip="10.77.0.14", replication_ip="10.78.0.14"),
)
SECOND_PAIR = ("hostC", "hostD")
PV_SIZE_MIB = 1024
# Root of the test tiers' salt daemons (tests/conftest.py salt_factories_config).
SALT_TEST_ROOT = Path("/tmp") / instance.name("pvsalt")
# Daemons only the lab starts here; zombies (orphans PID 1 never reaps) do not count.
LAB_PROCESS = re.compile(r"qemu-system|libvirtd|virtlogd|salt-minion|salt-master")
# Where any lab instance keeps its files: its loop devices' backing files, sockets, daemons.
ANY_LAB_PATHS = ("/var/tmp/pvlab", "/tmp/pvsalt", "/run/pvlab")
# The lab's paths and namespace names are fixed: one run of each lab instance at a time.
LOCK_PATH = Path("/run/lock") / (instance.name("pvlab") + ".lock")
def hold_lock():
    """Take the machine-wide lab lock (waiting for another run), kept until exit."""
    locks.hold(LOCK_PATH, "lab")


def create_control_namespace():
    """The namespace of the salt-master and the test process: bridge adm0."""
    ns = namespaces.netns_name(namespaces.CONTROL)
    namespaces.create_netns(namespaces.CONTROL)
    if namespaces.sh(["ip", "-n", ns, "link", "show", "adm0"], check=False).returncode:
        namespaces.sh(["ip", "-n", ns, "link", "add", "adm0", "type", "bridge"])
        namespaces.sh(["ip", "-n", ns, "link", "set", "adm0", "type", "bridge", "forward_delay", "0"])
    namespaces.sh(["ip", "-n", ns, "addr", "replace", f"{CONTROL_IP}/24", "dev", "adm0"])
    namespaces.sh(["ip", "-n", ns, "link", "set", "adm0", "up"])


class Lab:
    """Lab hosts: a pair (the default), two pairs (the fleet tests), or a single host (the
    functional tier). Hosts are paired in order: each pair has a replication link and a
    public network (br0 joined by pub0) of its own."""

    def __init__(self, names=("hostA", "hostB"), pv_size_mib=PV_SIZE_MIB):
        self.hosts = {h.name: h for h in HOSTS if h.name in names}
        self.pv_size_mib = pv_size_mib
        self.libvirt = True

    def up(self, libvirt=True, clean_first=True):
        """Build the lab; a leftover of a killed run is cleaned first.

        The test process that already lives in the control namespace passes
        clean_first=False (it cleaned before entering it).
        """
        if clean_first:
            clean()
            create_control_namespace()
        DATA.mkdir(parents=True, exist_ok=True)
        self.libvirt = libvirt
        self._build(list(self.hosts.values()))
        return self

    def extend(self, names=SECOND_PAIR):
        """Add hosts (a second pair) to this running lab; ``down`` removes them with the rest."""
        new = [h for h in HOSTS if h.name in names and h.name not in self.hosts]
        self.hosts.update((h.name, h) for h in new)
        self._build(new)
        return [self.hosts[name] for name in names]

    def retire(self, names=SECOND_PAIR):
        """Remove hosts ``extend`` added: their daemons, namespaces, loop devices and files
        (their VMs destroyed first, so no DRBD device of the shim maps their discs)."""
        for name in names:
            host = self.hosts.pop(name, None)
            if host is None:
                continue
            host.stop_libvirt()
            namespaces.delete_host_namespaces(name)
            lablvm.detach_lab_loops(host.dir)
            shutil.rmtree(host.dir, ignore_errors=True)

    def _build(self, hosts):
        for host in hosts:
            host.create()
        self._wire(hosts)
        for host in hosts:
            host.configure_links()
            self._create_storage(host)
            if self.libvirt:
                host.start_libvirt()
                host.start_sshd()

    def _wire(self, hosts):
        """Admin links to the control bridge, replication and public links within each pair."""
        ctl = namespaces.netns_name(namespaces.CONTROL)
        for host in hosts:
            ns = namespaces.netns_name(host.name)
            port = f"adm-{host.name}"
            namespaces.sh(["ip", "-n", ctl, "link", "add", port, "type", "veth",
                           "peer", "name", "eth0", "netns", ns])
            namespaces.sh(["ip", "-n", ctl, "link", "set", port, "master", "adm0", "up"])
            namespaces.sh(["ip", "-n", ns, "link", "add", "br0", "type", "bridge",
                           "forward_delay", "0"])
        names = [host.name for host in hosts]
        for first, second in zip(names[::2], names[1::2], strict=False):
            a, b = namespaces.netns_name(first), namespaces.netns_name(second)
            for link in ("eth1", "pub0"):
                namespaces.sh(["ip", "-n", a, "link", "add", link, "type", "veth",
                               "peer", "name", link, "netns", b])
        if len(names) % 2:
            # A single host still gets the interfaces the product expects;
            # their peers stay in the same namespace (this kernel has no dummy).
            ns = namespaces.netns_name(names[-1])
            for link in ("eth1", "pub0"):
                namespaces.sh(["ip", "-n", ns, "link", "add", link, "type", "veth",
                               "peer", "name", f"{link}-peer"])
                namespaces.sh(["ip", "-n", ns, "link", "set", f"{link}-peer", "up"])

    def _create_storage(self, host):
        lablvm.create_volume_groups(host.run, host.dir, self.pv_size_mib)

    def down(self):
        """Stop everything in the lab; leaves no process, namespace, mount or loop."""
        hold_lock()  # before stopping libvirt: the lab may be another run's
        for host in self.hosts.values():
            if namespaces.netns_path(host.name).exists():
                host.stop_libvirt()
        clean()


def clean():
    """Remove every trace of a lab, including one left by a killed run.

    Every lab run starts here, so this is where it takes the lab lock.
    """
    hold_lock()
    for name in namespaces.lab_netns_names():
        namespaces.kill_netns_processes(name)
    for name in namespaces.lab_netns_names():
        if name != namespaces.CONTROL:
            namespaces.delete_host_namespaces(name)
    if namespaces.netns_path(namespaces.CONTROL).exists():
        namespaces.delete_host_namespaces(namespaces.CONTROL)
    if namespaces.NS_DIR.exists():
        for leftover in namespaces.NS_DIR.iterdir():
            namespaces.sh(["umount", str(leftover)], check=False)
            leftover.unlink(missing_ok=True)
        namespaces.sh(["umount", str(namespaces.NS_DIR)], check=False)
        for directory in (namespaces.NS_DIR, namespaces.NS_DIR.parent):
            with contextlib.suppress(OSError):
                directory.rmdir()
    lablvm.detach_lab_loops(DATA)
    hostlib.remove_created_mountpoints()
    for tree in (DATA, SALT_TEST_ROOT):
        shutil.rmtree(tree, ignore_errors=True)


def leftovers():
    """What the labs left behind, every instance of them (instance.py): a list of
    human-readable lines (empty when clean).

    The kernel lab's too (tests/kernel/klab.py: its QEMU, namespace holders
    and /var/tmp/pvkernel), though it has a lock of its own."""
    from tests.kernel import klab

    found = [f"network namespace {name}" for name in namespaces.any_lab_netns()]
    found += klab.leftovers()
    loops = json.loads(
        subprocess.run(["losetup", "-J", "-l"], capture_output=True, text=True).stdout or "{}"
    ).get("loopdevices", [])
    found += [
        f"loop device {d['name']} -> {d['back-file']}"
        for d in loops
        if str(d.get("back-file") or "").startswith(ANY_LAB_PATHS[0])
    ]
    mounts = open("/proc/self/mountinfo", encoding="utf-8").read()
    found += [f"mount {line.split()[4]}" for line in mounts.splitlines() if "/run/pvlab" in line]
    procs = subprocess.run(["ps", "-eo", "pid=,stat=,args="], capture_output=True, text=True)
    found += [
        f"process {line.strip()}"
        for line in procs.stdout.splitlines()
        if LAB_PROCESS.search(line) and line.split()[1][0] != "Z" and _is_lab_process(line.split()[0])
    ]
    return found


def _is_lab_process(pid):
    """A process of the lab: it lives in a network namespace other than the
    machine's own (all lab hosts do), or it names a lab path."""
    try:
        if os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/1/ns/net"):
            return True
        cmdline = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
    except OSError:
        return False
    return any(path in cmdline for path in ANY_LAB_PATHS)


def instances():
    """The instance suffixes (instance.py) of every lab that has left something here."""
    found = {instance.ANY_NETNS.match(name).group(1) for name in namespaces.any_lab_netns()}
    for root in ("/var/tmp", "/run", "/tmp"):
        found |= {p.name[len(base):] for base in ("pvlab", "pvsalt") for p in Path(root).glob(base + "*")
                  if p.is_dir() and p.name[len(base):].isdigit()}
    return sorted(found | {instance.SUFFIX})
