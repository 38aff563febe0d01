"""Bootable media of the test guest, for VMs that boot as a real one does (BIOS, no direct
kernel boot): an installer-like CD and an OS disc image.

- ``cd_iso``: an ISO 9660 image that SeaBIOS boots through ISOLINUX (El Torito,
  no emulation), like an installer CD.
- ``disc_image``: a raw disc image: one FAT file system over the whole disc with
  SYSLINUX in its boot sector (no partition table: SeaBIOS boots sector 0), like
  a cloud image written onto a VM's disc.

Both hold the test guest's kernel and initrd (tests/guest/build) and boot it
with ``console=ttyS0 pairvm.boot=<medium>``: the guest prints its command
line after its marker (``cmdline: ...``), so a test sees which medium it booted
from. Built in well under a second with genisoimage, isolinux, syslinux,
mtools and dosfstools (scripts/bootstrap installs them); no mount, no loop
device.
"""

import shutil
import subprocess
from pathlib import Path

ISOLINUX = Path("/usr/lib/ISOLINUX/isolinux.bin")
LDLINUX = Path("/usr/lib/syslinux/modules/bios/ldlinux.c32")


def _config(medium):
    return (f"SERIAL 0 115200\nDEFAULT {medium}\nPROMPT 0\nTIMEOUT 0\nLABEL {medium}\n"
            f"  KERNEL vmlinuz\n  INITRD initrd.img\n  APPEND console=ttyS0 pairvm.boot={medium}\n")


def cd_iso(out, guest_dir, label="PAIRVMCD"):
    """Write the bootable CD image ``out`` (pairvm.boot=cd); returns its path."""
    out = Path(out)
    tree = out.with_suffix(".tree")
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    try:
        for source in (ISOLINUX, LDLINUX, Path(guest_dir) / "vmlinuz", Path(guest_dir) / "initrd.img"):
            shutil.copy(source, tree / source.name)
        (tree / "isolinux.cfg").write_text(_config("cd"))
        subprocess.run(["genisoimage", "-quiet", "-o", str(out), "-V", label, "-b", "isolinux.bin",
                        "-c", "boot.cat", "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table",
                        str(tree)], check=True)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    return out


def disc_image(out, guest_dir, size_mib=18):
    """Write the bootable raw disc image ``out`` of ``size_mib`` MiB (pairvm.boot=disc)."""
    out = Path(out)
    out.unlink(missing_ok=True)
    config = out.with_suffix(".cfg")
    config.write_text(_config("disc"))
    try:
        subprocess.run(["mkfs.fat", "-C", "-n", "PAIRVMDISC", str(out), str(size_mib * 1024)], check=True,
                       capture_output=True)
        subprocess.run(["syslinux", "--install", str(out)], check=True)
        subprocess.run(["mcopy", "-i", str(out), str(Path(guest_dir) / "vmlinuz"),
                        str(Path(guest_dir) / "initrd.img"), "::/"], check=True)
        subprocess.run(["mcopy", "-i", str(out), str(config), "::/syslinux.cfg"], check=True)
    finally:
        config.unlink(missing_ok=True)
    return out
