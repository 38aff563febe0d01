"""image, backup and restore on real DRBD 8.4: their data reach the peer's disc.

The product's own functions run in the kernel-lab hosts (``salt-call
--local``); their data paths (Python's ``open`` and ``qemu-img convert`` onto
``/dev/drbdN``, ``pv`` reading a snapshot, ``os.open`` for a restore) reach
the storage guests' real devices through the block proxy (``blockfs.py``).
What the peer holds is read as an operator would: disconnect the peer's
resource, read its **backing LV** in its guest, connect it again. The backup
host is an sshd in each host's namespace on its loopback, both serving one
directory.
"""

import hashlib
import subprocess
import time

import pytest

from tests.kernel import klab
from tests.kernel.conftest import BACKUP, IMAGES
from tests.kernel.storage import create_on_both, lv_names, synced, wait_drbd
from tests.lab import sshd

SSHD = klab.DATA / "backup-sshd"
STORE = klab.DATA / "backups"
# A SHA-512 crypt hash (of "pvkernel"); the image's seed needs one.
PASSWORD_HASH = "$6$pvkernel$" + "x" * 86


def dest(path):
    return f"root@127.0.0.1:{STORE}/{path}"


@pytest.fixture(scope="module")
def backup_host(kernel_lab):
    """sshd on each host's loopback (its own network namespace) for root with a key; the
    key and the known host where pillar's backup settings name them."""
    conf = sshd.prepare(SSHD, BACKUP["port"], ("root",), extra=("PermitRootLogin prohibit-password",))
    STORE.mkdir(mode=0o755)
    known = sshd.known_hosts(SSHD, BACKUP["port"], "127.0.0.1")
    daemons = []
    try:
        for host in kernel_lab.hosts.values():
            key = host.root / BACKUP["key"].lstrip("/")
            key.write_bytes((SSHD / "client").read_bytes())
            key.chmod(0o600)
            (host.root / BACKUP["known_hosts"].lstrip("/")).write_text(known)
            daemons.append(sshd.start(host, conf, SSHD / f"sshd-{host.name}.log", "127.0.0.1",
                                      BACKUP["port"]))
        yield STORE
    finally:
        sshd.stop(*daemons)


@pytest.fixture
def proxy_logs(kernel_lab):
    """The block proxies' logs (errors, retries), printed when not empty: the lab's files go with it."""
    yield
    for host in kernel_lab.hosts.values():
        log = host.dir / "blockfs.log"
        if log.exists() and log.read_text().strip():
            print(f"\n{host.name} block proxy log:\n{log.read_text()[-3000:]}")


def guest_sha(host, device, size):
    """sha256 of the first ``size`` bytes of ``device``, read in the host's guest (O_DIRECT)."""
    script = (f"dd if={device} bs=1M count={size} iflag=count_bytes,direct 2>/dev/null | sha256sum")
    return host.guest_sh(script).split()[0]


def peer_holds(peer, name, size):
    """sha256 of the first ``size`` bytes of the VM's backing LV on ``peer``, read as an
    operator would: the peer's resource disconnected first (no write can reach it while it
    is read), then connected again and resynced."""
    vg = "there"  # the peer holds the replica
    peer.salt("drbd.disconnect", name)
    wait_drbd((peer,), name, connection="StandAlone")
    try:
        return guest_sha(peer, f"/dev/{vg}/{name}", size)
    finally:
        peer.salt("drbd.connect", name)


def data_bytes(host, minor):
    """The size of /dev/drbd<minor> (its data area), from the guest's sysfs."""
    return int(host.guest(["cat", f"/sys/block/drbd{minor}/size"])[1]) * 512


def test_image_backup_and_restore_reach_the_peers_backing_lv(kernel_lab, backup_host, proxy_logs):
    start = time.monotonic()
    a, b = kernel_lab.hosts["hostA"], kernel_lab.hosts["hostB"]
    create_on_both(kernel_lab, "kd1", home=a)

    # image: raw (Python's open onto hostA's /dev/drbd4), then qcow2 over its start
    # (qemu-img convert); the peer's backing LV then holds the qcow2 image's bytes, then
    # the rest of the raw one's
    for dist in ("kraw", "kqcow"):
        ret = a.salt("pairvm.image", "kd1", dist, "kd1.example.org", PASSWORD_HASH)
        assert "drbdadm primary kd1" in ret["changes"] and "drbdadm secondary kd1" in ret["changes"]
    written = IMAGES["kqcow"] + IMAGES["kraw"][len(IMAGES["kqcow"]):]
    assert peer_holds(b, "kd1", len(written)) == hashlib.sha256(written).hexdigest()
    synced((a, b), "kd1")
    assert a.salt("drbd.status", "kd1")["role"] == "Secondary"
    print(f"\nimages written and found on the peer: {time.monotonic() - start:.1f} s")

    # backup on the peer, as while kd1 runs on hostA (Primary there): pv reads a real
    # snapshot of hostB's replica, the LV DRBD wrote to
    a.salt("drbd.primary", "kd1")
    size = data_bytes(a, 4)
    disc = guest_sha(a, "/dev/drbd4", size)
    try:
        ret = b.salt("pairvm.backup", "kd1", dest("_NAME.gz"))
    finally:
        a.salt("drbd.secondary", "kd1")
    assert ret["changes"][0] == "lvcreate -s -n kd1-backup -l 20%ORIGIN there/kd1"
    assert ret["bytes"] == size and not [lv for lv in lv_names(b) if lv.endswith("-backup")]
    stored = subprocess.run(["pigz", "-dc", str(STORE / "kd1.gz")], capture_output=True, check=True).stdout
    assert hashlib.sha256(stored).hexdigest() == disc and stored.startswith(written)
    print(f"backup of {size} bytes on the peer: {time.monotonic() - start:.1f} s")

    # restore onto kd2, homed on hostB: os.open of hostB's /dev/drbd5; hostA's replica gets it
    create_on_both(kernel_lab, "kd2", home=b)
    assert data_bytes(b, 5) == size
    ret = b.salt("pairvm.restore", "kd2", dest("kd1.gz"), "confirm=True")
    assert [c.split()[0] for c in ret["changes"]] == ["ssh", "drbdadm", "ssh", "drbdadm"]
    assert peer_holds(a, "kd2", size) == disc
    # (kd1 and kd2 stay: the lab goes at the end of the session, destroy is test_storage's)
    print(f"data paths scenario: {time.monotonic() - start:.1f} s")
