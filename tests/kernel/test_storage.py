"""A VM's storage through the product's own functions, on real DRBD 8.4 and LVM.

Every pairvm/drbd function runs unchanged through ``salt-call --local`` in a
kernel-lab host; every drbdadm/drbdsetup/LVM command it issues runs in that
host's storage guest (tests/kernel/README.md). Data is written and read by
the test inside the guests.
"""

import re
import time

from tests.kernel import conftest as kconf
from tests.kernel import klab
from tests.kernel.conftest import HOST_COMMAND
from tests.kernel.storage import (
    MIB,
    checksum,
    create_on_both,
    events,
    lv_names,
    synced,
    wait_drbd,
    write_pattern,
)

# DRBD 8.4 internal meta data on a 96 MiB LV: (capacity & ~7) - md_size_sect, in sectors.
DATA_96M = (96 * 2048 - (8 + 8 + 64)) * 512


def test_lifecycle_create_failover_resize_snapshot_destroy(kernel_lab):
    start = time.monotonic()
    a, b = create_on_both(kernel_lab, "kvm1")
    # the guests' drbdadm read exactly the files the product wrote
    for h in (a, b):
        for path in ("/etc/drbd.d/kvm1.res", "/etc/drbd.d/global_common.conf"):
            assert h.guest(["cat", path])[1] == (h.root / path.lstrip("/")).read_text()
    assert "here/kvm1" in lv_names(a) and "there/kvm1" in lv_names(b)
    assert a.salt("drbd.status", "kvm1")["up_to_date"] is True
    for h in (a, b):  # the peers authenticate: the running resource has the pair's secret
        auth = h.salt("drbd.peer_auth")  # (test_data_paths' resources may still be up: all the same)
        assert auth["kvm1"] is True and set(auth.values()) == {True}, auth
        assert re.search(rf'shared-secret\s+"{kconf.SECRET}";', h.guest(["drbdsetup", "show", "kvm1"])[1])

    # the secret rotated (README "DRBD secret"): each host's pairvm.create writes the resource
    # file and has the running resource take it; real DRBD 8.4 connects with the new secret
    kconf.write_pillar_and_tree(klab.DATA, secret="kernel-lab-secret-2")
    try:
        for h in (b, a):
            assert h.salt("pairvm.create", "kvm1")["changes"] == ["write /etc/drbd.d/kvm1.res",
                                                                 "drbdadm adjust kvm1"]
        synced((a, b), "kvm1")
        for h in (a, b):
            shown = h.guest(["drbdsetup", "show", "kvm1"])[1]
            assert re.search(r'shared-secret\s+"kernel-lab-secret-2";', shown)
        a.guest(["drbdadm", "disconnect", "kvm1"])  # a new handshake: with the new secret
        a.guest(["drbdadm", "connect", "kvm1"])
        synced((a, b), "kvm1")
    finally:
        kconf.write_pillar_and_tree(klab.DATA)
    for h in (b, a):
        h.salt("pairvm.create", "kvm1")
    synced((a, b), "kvm1")

    # promote on the home host and write; fail over to the peer: the data is there
    a.salt("drbd.primary", "kvm1")
    pattern = write_pattern(a, "/dev/drbd1")
    a.salt("drbd.secondary", "kvm1")
    b.salt("drbd.primary", "kvm1")
    assert checksum(b, "/dev/drbd1") == pattern
    state = b.salt("drbd.status", "kvm1")
    assert (state["role"], state["peer_role"], state["connection"]) == ("Primary", "Secondary", "Connected")
    b.salt("drbd.secondary", "kvm1")
    a.salt("drbd.primary", "kvm1")

    # grow the disc: the peer first, then the home host, which resizes DRBD; each host's
    # record says the new size
    assert b.salt("pairvm.resize", "kvm1", "96M")["changes"] == [
        "lvextend -L 96M /dev/there/kvm1", "write /machines/kvm1"]
    grown = a.salt("pairvm.resize", "kvm1", "96M")["changes"]
    assert grown == ["lvextend -L 96M /dev/here/kvm1", "drbdadm resize kvm1", "write /machines/kvm1"]
    synced((a, b), "kvm1")
    for h in (a, b):  # (8.4 refuses to open a Secondary's device at all: blockdev would fail on B)
        assert int(h.guest(["cat", "/sys/block/drbd1/size"])[1]) * 512 == DATA_96M
    records = [(h.root / "machines/kvm1").read_text() for h in (a, b)]
    assert records[0] == records[1] and '"disc_mib": 96\n' in records[0]
    assert checksum(a, "/dev/drbd1") == pattern
    for h in (b, a, a):  # again, on each host: nothing to do
        assert h.salt("pairvm.resize", "kvm1", "96M")["changes"] == [], h.name

    # a snapshot of the backing LV on the secondary holds the primary's data
    write_pattern(a, "/dev/drbd1", mib=4, offset_mib=90)  # into the grown area too
    b.guest(["lvcreate", "-q", "-s", "-L", "32M", "-n", "kvm1-snap", "there/kvm1"])
    whole = DATA_96M // MIB
    assert checksum(b, "/dev/there/kvm1-snap", mib=whole) == checksum(a, "/dev/drbd1", mib=whole)
    b.guest(["lvremove", "-q", "-y", "there/kvm1-snap"])

    # destroy on both: no LV, no resource, no file left
    a.salt("drbd.secondary", "kvm1")
    for h in (a, b):
        assert h.salt("pairvm.destroy", "kvm1", "confirm=True")["changes"][0] == "drbdadm down kvm1"
        assert not [lv for lv in lv_names(h) if lv.endswith("/kvm1")]
        assert events(h, "kvm1") == {}
        assert " 1: cs:" not in h.guest(["cat", "/proc/drbd"])[1]
        assert h.guest(["test", "-e", "/etc/drbd.d/kvm1.res"], check=False)[0] == 1
        assert not (h.root / "machines/kvm1").exists()
    print(f"\nlifecycle scenario: {time.monotonic() - start:.1f} s")


def test_split_brain_detected_refused_and_resolved_without_losing_anything(kernel_lab):
    start = time.monotonic()
    a, b = create_on_both(kernel_lab, "kvm2")
    a.salt("drbd.primary", "kvm2")
    write_pattern(a, "/dev/drbd2")

    # a plain disconnect is StandAlone too, but not a split brain
    a.salt("drbd.disconnect", "kvm2")
    wait_drbd((b,), "kvm2", connection="Connecting")
    state = a.salt("drbd.status", "kvm2")
    assert (state["connection"], state["split_brain"]) == ("StandAlone", False)
    assert b.salt("drbd.status", "kvm2")["split_brain"] is False

    # both sides write while apart, then reconnect: the kernel finds a split brain
    b.salt("drbd.disconnect", "kvm2")
    b.salt("drbd.primary", "kvm2")
    survivor = write_pattern(a, "/dev/drbd2")
    victim_old = write_pattern(b, "/dev/drbd2")
    for h in (a, b):
        h.salt("drbd.secondary", "kvm2")
    for h in (a, b):
        h.salt("drbd.connect", "kvm2")
    wait_drbd((a, b), "kvm2", connection="StandAlone")
    deadline = time.monotonic() + 30
    while not all((h.root / "var/lib/pairvm/split-brain/kvm2").exists() for h in (a, b)):
        assert time.monotonic() < deadline, "the kernel's split-brain handler marked nothing"
        time.sleep(0.2)
    for h in (a, b):
        assert h.salt("drbd.status", "kvm2")["split_brain"] is True
    assert "Split-Brain detected but unresolved" in a.guest(["dmesg"])[1]

    # start refuses and names the recovery; nothing was discarded on either side
    rc, err = a.salt("pairvm.start", "kvm2", check=False)
    assert rc != 0 and "pairvm split_brain_victim kvm2" in err, err
    assert checksum(a, "/dev/here/kvm2") == survivor
    assert checksum(b, "/dev/there/kvm2") == victim_old

    # hostB is the victim; test=True first: only the plan
    plan = b.salt("pairvm.split_brain_victim", "kvm2", "test=True")
    assert [c.split()[:2] for c in plan["changes"]] == [["lvcreate", "-s"], ["drbdadm", "connect"]]
    assert b.salt("drbd.status", "kvm2")["split_brain"] is True
    # the host command on hostB, then the survivor connects (what the runner does)
    done = b.run([HOST_COMMAND, "split_brain_victim", "kvm2"], check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "drbdadm connect --discard-my-data kvm2" in done.stdout
    a.salt("drbd.connect", "kvm2")
    synced((a, b), "kvm2")

    # the survivor's data everywhere; the victim's old data in its snapshot
    (snap,) = [lv for lv in lv_names(b) if lv.startswith("there/kvm2-sb-")]
    assert checksum(b, f"/dev/{snap}") == victim_old
    assert checksum(b, "/dev/there/kvm2") == survivor
    a.salt("drbd.primary", "kvm2")
    assert checksum(a, "/dev/drbd2") == survivor
    for h in (a, b):
        assert h.salt("drbd.status", "kvm2")["split_brain"] is False
    # no split brain any more: the command refuses and changes nothing
    rc, err = b.salt("pairvm.split_brain_victim", "kvm2", check=False)
    assert rc != 0 and "not in split brain: nothing is discarded" in err, err

    a.salt("drbd.secondary", "kvm2")
    b.guest(["lvremove", "-q", "-y", snap])
    for h in (a, b):
        h.salt("pairvm.destroy", "kvm2", "confirm=True")
    print(f"\nsplit-brain scenario: {time.monotonic() - start:.1f} s")
