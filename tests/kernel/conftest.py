"""The kernel tier: the product's own functions on real DRBD 8.4 and LVM.

One kernel lab for the whole session (tests/kernel/klab.py): two storage
guests booted under TCG, and two host namespaces in which ``salt-call
--local`` runs the formula's execution modules, synced from a local file
root as a masterless minion would, with the pillar below.
"""

import time

import pytest

import salt.utils.yaml
from tests.kernel import klab
from tests.lab import saltlab
from tests.lab.hosts import REPO

# What the product reads from pillar here: the demo pillar (pair, pool, fast
# resync options), libvirt's built-in test driver instead of qemu:///system
# (no VM is started: the storage is the point), and the tier's VMs.
VMS = {
    "kvm1": 1, "kvm2": 2, "kc1": 3, "kmx1": 4,
}


# The host command, where pairvm.config installs it in a kernel-lab host (a private path).
HOST_COMMAND = "/var/lib/pairvm/pairvm-command"


def pillar():
    data = salt.utils.yaml.safe_load((REPO / "pillar" / "pairvm.sls").read_text())
    pairvm = data["pairvm"]
    pairvm["libvirt_uri"] = "test:///default"
    pairvm["cli"] = {"path": HOST_COMMAND}  # /usr/local/sbin is the machine's own here
    pairvm["vms"] = {name: {"home": "hostA", "memory": 128, "disc": "64M"} for name in VMS}
    pairvm["allocations"] = {
        name: {"ip": f"10.79.0.{20 + n}", "mac": f"52:54:00:79:00:{20 + n:02x}",
               "drbd_port": 7800 + n, "drbd_minor": n, "vnc_display": 10 + n}
        for name, n in VMS.items()
    }
    return data


def write_pillar_and_tree(data_dir):
    pillar_dir = data_dir / "pillar"
    pillar_dir.mkdir(parents=True, exist_ok=True)
    (pillar_dir / "top.sls").write_text("base:\n  '*':\n    - pairvm\n")
    (pillar_dir / "pairvm.sls").write_text(salt.utils.yaml.safe_dump(pillar()))
    return pillar_dir, saltlab.file_tree(data_dir / "srv")


def configure_salt(lab):
    pillar_dir, tree = write_pillar_and_tree(klab.DATA)
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
        "grains_cache": True,
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
