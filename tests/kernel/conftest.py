"""The kernel tier: the product's own functions on real DRBD 8.4 and LVM.

One kernel lab for the whole session (tests/kernel/klab.py): two storage
guests booted under TCG, and two host namespaces in which ``salt-call
--local`` runs the formula's execution modules, synced from a local file
root as a masterless minion would, with the pillar below.
"""

import hashlib
import subprocess
import time

import pytest

import salt.utils.yaml
from tests.kernel import klab
from tests.lab import saltlab
from tests.lab.hosts import REPO

# What the product reads from pillar here: the demo pillar (pair, pool, fast
# resync options), libvirt's built-in test driver instead of qemu:///system
# (no VM is started: the storage is the point), the tier's VMs (name: minor,
# home, disc), the backup settings and the image catalogue of test_data_paths.py.
VMS = {
    "kvm1": (1, "hostA", "64M"), "kvm2": (2, "hostA", "64M"), "kc1": (3, "hostA", "64M"),
    "kd1": (4, "hostA", "16M"), "kd2": (5, "hostB", "16M"), "km1": (6, "hostA", "64M"),
    "kmx1": (7, "hostA", "64M"), "ksw1": (8, "hostA", "64M"),
}
# The backup host: an sshd in each host's namespace on its own loopback, serving one
# directory (test_data_paths.py); the hosts' key and known host under their private
# /var/lib/pairvm.
BACKUP = {"port": 2222, "key": "/var/lib/pairvm/backup-key",
          "known_hosts": "/var/lib/pairvm/backup-known-hosts", "speed": 0}
IMAGE_DIR = "/var/lib/pairvm/test-images"  # on hostA, kd1's home
MIB = 1 << 20


def content(tag, size):
    """Known, incompressible bytes: a tag, then a hash chain."""
    out, block = bytearray(tag.encode().ljust(512, b"\0")), hashlib.sha256(tag.encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block * 128
    return bytes(out[:size])


# The images: raw (copied by Python's open) and qcow2 (qemu-img convert), each onto /dev/drbdN.
IMAGES = {"kraw": content("PVKERNEL-IMAGE-RAW", 6 * MIB), "kqcow": content("PVKERNEL-IMAGE-QCOW2", 4 * MIB)}


# The host command, where pairvm.config installs it in a kernel-lab host (a private path).
HOST_COMMAND = "/var/lib/pairvm/pairvm-command"


# The pair's DRBD secret, as the master's ext_pillar would serve it.
SECRET = "kernel-lab-secret-1"


def pillar(images=None, secret=SECRET):
    data = salt.utils.yaml.safe_load((REPO / "pillar" / "pairvm.sls").read_text())
    pairvm = data["pairvm"]
    pairvm["drbd_options"]["shared_secret"] = secret
    pairvm["libvirt_uri"] = "test:///default"
    pairvm["cli"] = {"path": HOST_COMMAND}  # /usr/local/sbin is the machine's own here
    pairvm["vms"] = {name: {"home": home, "memory": 128, "disc": disc}
                     for name, (_, home, disc) in VMS.items()}
    pairvm["allocations"] = {
        name: {"ip": f"10.79.0.{20 + n}", "mac": f"52:54:00:79:00:{20 + n:02x}",
               "drbd_port": 7800 + n, "drbd_minor": n, "vnc_display": 10 + n}
        for name, (n, _, _) in VMS.items()
    }
    pairvm["backup"] = BACKUP
    pairvm["images"] = images or {}
    return data


def write_images(host):
    """The catalogue's files on ``host`` (kd1's home): {name: catalogue entry}."""
    src = host.root / IMAGE_DIR.lstrip("/")
    src.mkdir(parents=True, exist_ok=True)
    (src / "kraw.raw").write_bytes(IMAGES["kraw"])
    (src / "kqcow.raw").write_bytes(IMAGES["kqcow"])
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(src / "kqcow.raw"),
                    str(src / "kqcow.qcow2")], check=True)
    (src / "kqcow.raw").unlink()
    return {
        name: {"source": f"{IMAGE_DIR}/{file}", "format": fmt,
               "sha256": hashlib.sha256((src / file).read_bytes()).hexdigest()}
        for name, file, fmt in (("kraw", "kraw.raw", "raw"), ("kqcow", "kqcow.qcow2", "qcow2"))
    }


def write_pillar_and_tree(data_dir, images=None, secret=SECRET):
    """The masterless pillar and file tree; without ``images``, the catalogue already written."""
    pillar_dir = data_dir / "pillar"
    pillar_dir.mkdir(parents=True, exist_ok=True)
    (pillar_dir / "top.sls").write_text("base:\n  '*':\n    - pairvm\n")
    written = pillar_dir / "pairvm.sls"
    if images is None and written.exists():
        images = salt.utils.yaml.safe_load(written.read_text())["pairvm"].get("images")
    written.write_text(salt.utils.yaml.safe_dump(pillar(images, secret)))
    return pillar_dir, saltlab.file_tree(data_dir / "srv")


def configure_salt(lab):
    pillar_dir, tree = write_pillar_and_tree(klab.DATA, write_images(lab.hosts["hostA"]))
    for host in lab.hosts.values():
        write_minion_config(host, tree, pillar_dir)


def write_minion_config(host, tree, pillar_dir):
    """A masterless minion in the host; grains cached (salt-call takes 1 s, not 2.5 s)."""
    minion = {
        "id": host.name,
        "file_client": "local",
        "file_roots": {"base": [str(tree)]},
        "pillar_roots": {"base": [str(pillar_dir)]},
        "root_dir": str(host.dir / "salt"),
        **saltlab.GRAINS,
        "grains_cache_expiration": 3600,
        "enable_fqdns_grains": False,
    }
    (host.root / "etc/salt/minion").write_text(salt.utils.yaml.safe_dump(minion))
    host.salt = saltlab.SaltCall(host, timeout=300)
    host.salt("saltutil.sync_all")
    host.salt("state.apply", "pairvm.config")  # /machines/_global and the host command, as on a real host


@pytest.fixture(scope="session")
def kernel_lab():
    start = time.monotonic()
    lab = klab.KernelLab().up()
    up = time.monotonic() - start
    try:
        configure_salt(lab)
        print(f"\nkernel lab: guests booted in {lab.boot_seconds['hostA']:.1f} s / "
              f"{lab.boot_seconds['hostB']:.1f} s (in parallel), lab up in {up:.1f} s, "
              f"salt synced in {time.monotonic() - start - up:.1f} s")
        yield lab
    finally:
        lab.down()
