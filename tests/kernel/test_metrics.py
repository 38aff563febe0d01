"""pairvm.metrics on real DRBD 8.4: what drbdsetup-84 prints with ``--statistics``, in the units
the product assumes (KiB), and the product's parser of it.

The namespace lab's DRBD shim models only ``size`` and a resync's
``out-of-sync``; the byte counters are this test's to check.
"""

import re

from tests.kernel.storage import MIB, product_drbd, synced

NAME, MINOR = "kmx1", 7  # tests/kernel/conftest.py VMS


def samples(text):
    return {(m.group(1), m.group(2) or ""): float(m.group(3))
            for m in re.finditer(r"^([a-z_]+)(?:\{(.*)\})? (\S+)$", text, re.M)}


def test_metrics_read_the_real_kernels_statistics(kernel_lab):
    a, b = kernel_lab.hosts["hostA"], kernel_lab.hosts["hostB"]
    b.salt("pairvm.create", NAME)
    a.salt("pairvm.create", NAME)
    try:
        synced((a, b), NAME)
        raw = a.guest(["drbdsetup", "events2", "--now", "--statistics", "all"])[1]
        stats = product_drbd._parse_events(raw)[NAME]["statistics"]
        assert set(stats) == {"size", "read", "written", "received", "sent", "out_of_sync"}, raw
        # the data area of a 64 MiB LV with internal meta data, in KiB
        assert 62 * 1024 < stats["size"] < 64 * 1024, raw
        assert stats["out_of_sync"] == 0 and stats["sent"] >= stats["size"]  # the initial sync went out
        a.salt("drbd.primary", NAME)
        a.guest_sh(f"dd if=/dev/urandom of=/dev/drbd{MINOR} bs=1M count=4 oflag=direct 2>/dev/null")
        here, there = samples(a.salt("pairvm.metrics")), samples(b.salt("pairvm.metrics"))
        vm = f'vm="{NAME}"'
        assert here[("pairvm_drbd_disk_written_bytes_total", vm)] >= 4 * MIB
        assert here[("pairvm_drbd_network_sent_bytes_total", vm)] >= stats["sent"] * 1024 + 4 * MIB
        assert there[("pairvm_drbd_disk_written_bytes_total", vm)] >= 4 * MIB + stats["size"] * 1024 - MIB
        assert here[("pairvm_drbd_device_size_bytes", vm)] == stats["size"] * 1024
        assert here[("pairvm_drbd_resync_done_ratio", vm)] == 1
        assert here[("pairvm_drbd_role", f'role="Primary",side="local",{vm}')] == 1
        assert there[("pairvm_drbd_connection_state", f'state="Connected",{vm}')] == 1
        assert here[("pairvm_collector_success", 'source="drbd"')] == 1
    finally:
        a.salt("drbd.secondary", NAME)
        for h in (a, b):
            h.salt("pairvm.destroy", NAME, "confirm=True")
