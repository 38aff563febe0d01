"""Rehoming (``pairvm.swap``, each host's part) on real DRBD 8.4 and LVM.

In the namespace lab (tests/integration/test_swap.py) the DRBD shim decides
whether the copied LVs need a resync. Here the in-tree 8.4.11 module does:
each host copies its own replica into the other volume group (the product's
Python copy, through the kernel lab's block proxy onto the guest's real
LV), brings the resource up on the copy, and the kernel's handshake finds
the same data generation in the copied meta data (``uuid_compare()=0``:
no resync) instead of the full sync it logged when the VM was created.
"""

from concurrent.futures import ThreadPoolExecutor

from tests.kernel.storage import checksum, events, lv_names, synced, write_pattern
from tests.kernel.test_storage import create_on_both

NAME = "ksw1"
DEVICE = "/dev/drbd8"  # ksw1: minor 8 (tests/kernel/conftest.py VMS)


def kernel_says(host, words):
    """The kernel log lines of ksw1's device that contain ``words``."""
    return [line for line in host.guest_sh("dmesg").splitlines() if "drbd8:" in line and words in line]


def test_swap_copies_each_replica_and_drbd_connects_without_a_resync(kernel_lab):
    a, b = create_on_both(kernel_lab, NAME)
    try:
        a.salt("drbd.primary", NAME)
        pattern = write_pattern(a, DEVICE)
        a.salt("drbd.secondary", NAME)
        synced((a, b), NAME)
        # positive control: the kernel logs the initial sync of create (SyncSource on the home)
        began = {h.name: len(kernel_says(h, "Began resync")) for h in (a, b)}
        assert began["hostA"] >= 1, a.guest_sh("dmesg | tail -40")
        equal = {h.name: len(kernel_says(h, "uuid_compare()=0 by rule")) for h in (a, b)}

        # As salt-run pairvm.swap runs them: each host's checks first (test=True), then both
        # hosts at once with resume=True (the swap is recorded as begun then; without it, a host
        # that looks at DRBD after the other took its resource down refuses: not Connected).
        for h in (a, b):
            h.salt("pairvm.swap", NAME, "home=hostB", "test=True")
        with ThreadPoolExecutor(2) as pool:
            on_a, on_b = pool.map(lambda h: h.salt("pairvm.swap", NAME, "home=hostB", "resume=True"), (a, b))
        assert "lvcreate -n ksw1 there -L 64M" in on_a["changes"]
        assert "lvcreate -n ksw1 here -L 64M" in on_b["changes"]
        synced((a, b), NAME)
        for h in (a, b):
            assert len(kernel_says(h, "Began resync")) == began[h.name], h.guest_sh("dmesg | tail -40")
            assert len(kernel_says(h, "uuid_compare()=0 by rule")) > equal[h.name], h.guest_sh("dmesg | tail")
            assert events(h, NAME)["replication"] == "Established"
        for h in (a, b):
            h.salt("pairvm.swap", NAME, "home=hostB", "finish=True")
        assert [lv for lv in lv_names(a) if lv.endswith(f"/{NAME}")] == [f"there/{NAME}"]
        assert [lv for lv in lv_names(b) if lv.endswith(f"/{NAME}")] == [f"here/{NAME}"]
        b.salt("drbd.primary", NAME)  # the new home
        assert checksum(b, DEVICE) == pattern
        b.salt("drbd.secondary", NAME)
    finally:
        for h in (a, b):
            h.salt("pairvm.destroy", NAME, "confirm=True", check=False)
