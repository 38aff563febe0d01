"""A live migration's DRBD window through the product's own functions, on real DRBD 8.4.

``pairvm.migrate`` (tests/integration/test_migrate.py, with the DRBD shim)
opens the window with ``drbd.net_options``, promotes the destination with
``drbd.primary``, demotes the source with ``drbd.secondary`` and closes the
window, checked with ``drbd.show``. Here the same functions run against the
in-tree 8.4.11 module: the window exists only at runtime, both sides may be
Primary only inside it, a write on the destination reaches the source, and
the kernel refuses to close the window while both are Primary (which is why
the product demotes first).
"""

from pairvmlib import drbdconf
from tests.kernel.storage import checksum, events, synced, write_pattern
from tests.kernel.test_storage import create_on_both

NAME = "km1"
DEVICE = "/dev/drbd6"  # km1: minor 6 (tests/kernel/conftest.py VMS)


def roles(a, b):
    return [events(h, NAME)["role"] for h in (a, b)]


def test_the_dual_primary_window_on_real_drbd(kernel_lab):
    a, b = create_on_both(kernel_lab, NAME)
    try:
        a.salt("drbd.primary", NAME)
        # positive control: without the window the kernel refuses a second Primary
        rc, err = b.salt("drbd.primary", NAME, check=False)
        assert rc != 0 and "Multiple primaries not allowed by config" in str(err), err

        for h in (a, b):
            h.salt("drbd.net_options", NAME, "allow_two_primaries=True")
            assert drbdconf.two_primaries(h.salt("drbd.show", NAME))
        b.salt("drbd.primary", NAME)
        assert roles(a, b) == ["Primary", "Primary"]
        pattern = write_pattern(b, DEVICE)  # the destination's QEMU writes

        # closing the window while both are Primary is refused: demote first
        rc, err = a.salt("drbd.net_options", NAME, "allow_two_primaries=False", check=False)
        assert rc != 0, err
        a.salt("drbd.secondary", NAME)
        for h in (a, b):
            h.salt("drbd.net_options", NAME, "allow_two_primaries=False")
            assert not drbdconf.two_primaries(h.salt("drbd.show", NAME))
        # the window is not in the resource file: the running config and the file agree again
        assert "allow-two-primaries" not in (a.root / f"etc/drbd.d/{NAME}.res").read_text()
        assert roles(a, b) == ["Secondary", "Primary"]
        synced((a, b), NAME)
        rc, err = a.salt("drbd.primary", NAME, check=False)  # single-primary again
        assert rc != 0 and "Multiple primaries not allowed by config" in str(err), err
        b.salt("drbd.secondary", NAME)
        a.salt("drbd.primary", NAME)
        assert checksum(a, DEVICE) == pattern
        a.salt("drbd.secondary", NAME)
    finally:
        for h in (a, b):
            h.salt("pairvm.destroy", NAME, "confirm=True", check=False)
