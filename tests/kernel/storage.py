"""Helpers of the kernel tier: DRBD state as the product parses it, data patterns."""

import time

from tests.lab.productdrbd import drbd as product_drbd

MIB = 1 << 20


def events(host, name):
    """The resource as the product's parser reads ``drbdsetup events2 --now`` in the guest
    (fast: no salt-call; what the product itself reads is asserted with drbd.status)."""
    out = host.guest(["drbdsetup", "events2", "--now", "all"])[1]
    return product_drbd._parse_events(out).get(name, {})


def wait_drbd(hosts, name, timeout=90, **want):
    """Wait until every host's resource has the wanted fields, e.g. connection="Connected"."""
    deadline = time.monotonic() + timeout
    while True:
        got = {h.name: events(h, name) for h in hosts}
        if all(all(g.get(k) == v for k, v in want.items()) for g in got.values()):
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}: waited {timeout}s for {want}, have {got}")
        time.sleep(0.3)


def synced(hosts, name):
    return wait_drbd(hosts, name, connection="Connected", disk="UpToDate", peer_disk="UpToDate")


def write_pattern(host, device, mib=8, offset_mib=0):
    """Random data onto ``device`` (in the guest); returns its sha256."""
    script = (f"dd if=/dev/urandom of=/tmp/pattern bs=1M count={mib} 2>/dev/null && "
              f"dd if=/tmp/pattern of={device} bs=1M seek={offset_mib} oflag=direct conv=notrunc "
              f"2>/dev/null && sha256sum /tmp/pattern && rm /tmp/pattern")
    return host.guest_sh(script).split()[0]


def checksum(host, device, mib=8, offset_mib=0):
    script = f"dd if={device} bs=1M skip={offset_mib} count={mib} iflag=direct 2>/dev/null | sha256sum"
    return host.guest_sh(script).split()[0]


def lv_names(host):
    """``vg/lv`` of every LV in the guest (real lvs)."""
    out = host.guest(["lvs", "--noheadings", "-o", "vg_name,lv_name"])[1]
    return sorted("/".join(line.split()) for line in out.splitlines() if line.strip())


def create_on_both(lab, name, home=None):
    """VM ``name`` created on both hosts in the runner's order, the peer first, then the home
    (the initial sync source); returns (home, peer) once they are in sync."""
    home = home or lab.hosts["hostA"]
    peer = next(h for h in lab.hosts.values() if h is not home)
    on_peer = peer.salt("pairvm.create", name)
    on_home = home.salt("pairvm.create", name)
    assert f"drbdadm primary --force {name}" in on_home["changes"]  # the home is the initial sync source
    assert f"drbdadm up {name}" in on_peer["changes"]
    synced((home, peer), name)
    return home, peer
