"""_modules/pairvm_console.py against the fake host: cdrom, serial, monitor, print_ssh_forwards."""

import os
import re
import xml.etree.ElementTree as ET
from unittest import mock

import libvirt
import libvirt_qemu
import pytest

from pairvmlib import render
from salt.exceptions import CommandExecutionError
from tests.unit.fakehost import MODULES, LibvirtDomain, drbd_state

pairvm = MODULES["pairvm_console"]


# --- cdrom --------------------------------------------------------------------------------------


@pytest.fixture
def iso(tmp_path):
    path = tmp_path / "iso" / "debian.iso"
    path.parent.mkdir()
    path.write_bytes(b"\0" * 16)
    return str(path)


@pytest.mark.parametrize("bad", ["iso/debian.iso", "/srv/../etc/shadow", "debian.iso"])
def test_cdrom_refuses_a_relative_path_or_dotdot(host, bad):
    host.install("vm1", drbd=drbd_state(role="Primary"), domain="running")
    with pytest.raises(CommandExecutionError, match="absolute path without '..'"):
        pairvm.cdrom("vm1", iso=bad)
    assert host.actions() == []


def test_cdrom_refuses_a_missing_file(host, tmp_path):
    host.install("vm1", drbd=drbd_state(role="Primary"), domain="running")
    with pytest.raises(CommandExecutionError, match="does not exist on hostA"):
        pairvm.cdrom("vm1", iso=str(tmp_path / "nope.iso"))
    assert host.actions() == []


@pytest.mark.parametrize("domain", [None, "defined"])
def test_cdrom_refuses_a_vm_that_is_not_running(host, iso, domain):
    host.install("vm1", drbd=drbd_state(), domain=domain)
    with pytest.raises(CommandExecutionError, match="vm1 is not running on hostA"):
        pairvm.cdrom("vm1", iso=iso)
    assert host.actions() == []


def test_cdrom_inserts_into_the_running_vm(host, iso):
    host.install("vm1", drbd=drbd_state(role="Primary"), domain="running")
    assert pairvm.cdrom("vm1")["cdrom"] is None
    ret = pairvm.cdrom("vm1", iso=iso)
    assert ret["cdrom"] == iso and ret["changes"] == [f"virsh change-media vm1 hdc --insert {iso}"]
    [(xml, flags)] = host.domains["vm1"].device_updates
    assert flags == libvirt.VIR_DOMAIN_AFFECT_LIVE
    disk = ET.fromstring(xml)
    assert (disk.tag, disk.get("device")) == ("disk", "cdrom")
    assert disk.find("source").get("file") == iso
    assert disk.find("target").get("dev") == "hdc" and disk.find("readonly") is not None


def test_cdrom_with_test_lists_the_change_and_makes_none(host, iso):
    host.install("vm1", drbd=drbd_state(role="Primary"), domain="running")
    ret = pairvm.cdrom("vm1", iso=iso, test=True)
    assert ret["changes"] == [f"virsh change-media vm1 hdc --insert {iso}"]
    assert ret["comment"].startswith("would: ") and ret["cdrom"] is None
    assert host.domains["vm1"].device_updates == [] and host.actions() == []


def test_cdrom_ejects_and_an_unchanged_cd_is_left_alone(host, iso):
    record = host.install("vm1", drbd=drbd_state(role="Primary"), domain="running")
    host.domains["vm1"].xml = render.domain_xml({**record, "cdrom": iso}, str(host.serial_dir))
    assert pairvm.cdrom("vm1") == {"name": "vm1", "cdrom": iso, "recorded": None, "running": True,
                                   "changes": [], "comment": ""}
    assert pairvm.cdrom("vm1", iso=iso)["changes"] == []
    assert host.domains["vm1"].device_updates == []
    ret = pairvm.cdrom("vm1", eject=True)
    assert ret["cdrom"] is None and ret["changes"] == ["virsh change-media vm1 hdc --eject"]
    [(xml, flags)] = host.domains["vm1"].device_updates
    assert flags == libvirt.VIR_DOMAIN_AFFECT_LIVE
    disk = ET.fromstring(xml)
    assert disk.get("device") == "cdrom" and disk.find("source") is None
    assert disk.find("target").get("dev") == "hdc"


def test_a_live_change_the_record_does_not_hold_lasts_until_the_vm_stops(host, iso):
    host.install("vm1", drbd=drbd_state(role="Primary"), domain="running")
    ret = pairvm.cdrom("vm1", iso=iso)
    assert ret["comment"] == (f"VM vm1's CD is {iso} until it stops (its record says no CD: "
                              f"record it with salt-run pairvm.cdrom)")
    assert ret["recorded"] is None


def test_a_stopped_vm_shows_the_cd_its_next_start_attaches(host, iso):
    host.pillar["pairvm"]["vms"]["vm1"]["cdrom"] = iso
    host.install("vm1", drbd=drbd_state(), domain="defined")
    assert pairvm.cdrom("vm1") == {"name": "vm1", "cdrom": iso, "recorded": iso, "running": False,
                                   "changes": [], "comment": ""}
    seed = host.root / "seeds" / "vm1.iso"
    seed.parent.mkdir(exist_ok=True)
    seed.write_bytes(b"seed")
    assert pairvm.cdrom("vm1")["cdrom"] == str(seed)


def test_a_stopped_vm_takes_only_the_cd_of_its_record_and_says_where_to_record_one(host, iso):
    host.install("vm1", drbd=drbd_state(), domain="defined")
    before = host.snapshot()
    with pytest.raises(CommandExecutionError, match=re.escape(
            "VM vm1 is not running on hostA: the CD of its next start is recorded on both hosts, through "
            f"the master: `pairvm cdrom vm1 {iso}` on a host, or `salt-run pairvm.cdrom vm1 iso={iso}`")):
        pairvm.cdrom("vm1", iso=iso)
    assert host.snapshot() == before and host.actions() == []
    ret = pairvm.cdrom("vm1", eject=True)  # the record holds no CD: nothing to do
    assert ret["changes"] == [] and ret["comment"] == "VM vm1's CD is already empty"


def test_changing_the_cd_deletes_the_seed_of_image_on_a_stopped_vm_too(host, iso):
    host.pillar["pairvm"]["vms"]["vm1"]["cdrom"] = iso  # as salt-run pairvm.cdrom recorded it
    host.install("vm1", drbd=drbd_state(), domain="defined")
    seed = host.root / "seeds" / "vm1.iso"
    seed.parent.mkdir(exist_ok=True)
    seed.write_bytes(b"seed")
    assert pairvm.cdrom("vm1", iso=iso, test=True)["changes"] == [f"rm {seed}"] and seed.exists()
    ret = pairvm.cdrom("vm1", iso=iso)
    assert ret["changes"] == [f"rm {seed}"] and not seed.exists() and ret["cdrom"] == iso
    assert host.domains["vm1"].device_updates == []


def test_cdrom_refuses_a_directory_an_unreadable_file_and_iso_with_eject(host, iso, monkeypatch):
    host.install("vm1", drbd=drbd_state(role="Primary"), domain="running")
    with pytest.raises(CommandExecutionError, match="is not a regular file on hostA"):
        pairvm.cdrom("vm1", iso=os.path.dirname(iso))
    with pytest.raises(CommandExecutionError, match="give iso or eject=True, not both"):
        pairvm.cdrom("vm1", iso=iso, eject=True)
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(CommandExecutionError, match=f"{re.escape(iso)} cannot be read on hostA"):
        pairvm.cdrom("vm1", iso=iso)
    assert host.actions() == [] and host.domains["vm1"].device_updates == []


def test_cdrom_path_with_quotes_stays_one_xml_attribute(host, tmp_path):
    odd = tmp_path / "it's \"odd\" <&>.iso"
    odd.write_bytes(b"")
    host.install("vm1", drbd=drbd_state(role="Primary"), domain="running")
    pairvm.cdrom("vm1", iso=str(odd))
    [(xml, _)] = host.domains["vm1"].device_updates
    assert ET.fromstring(xml).find("source").get("file") == str(odd)


# --- serial, monitor ------------------------------------------------------------------------------


def test_serial_returns_the_last_lines_of_the_log(host):
    host.install("vm1", drbd=drbd_state())
    (host.serial_dir / "vm1-serial.log").write_text("".join(f"line {i}\n" for i in range(1, 101)))
    assert pairvm.serial("vm1", lines=3) == "line 98\nline 99\nline 100"
    assert pairvm.serial("vm1").splitlines()[0] == "line 51"
    assert pairvm.serial("vm1", lines=500).count("\n") == 99


def test_serial_without_a_log_says_so(host):
    host.install("vm1", drbd=drbd_state())
    with pytest.raises(CommandExecutionError, match="vm1 has no serial log on hostA"):
        pairvm.serial("vm1")


def test_serial_of_a_vm_not_defined_here_is_refused(host):
    with pytest.raises(CommandExecutionError, match="^no VM vm1 on this host$"):
        pairvm.serial("vm1")


@pytest.mark.parametrize("lines", [0, -2, "x"])
def test_serial_refuses_a_line_count_below_one(host, lines):
    host.install("vm1", drbd=drbd_state())
    (host.serial_dir / "vm1-serial.log").write_text("a\nb\nc\n")
    with pytest.raises(CommandExecutionError, match="lines must be a whole number of 1 or more"):
        pairvm.serial("vm1", lines=lines)


def test_monitor_passes_an_hmp_command(host, monkeypatch):
    host.install("vm1", drbd=drbd_state(role="Primary"), domain="running")
    qmc = mock.Mock(return_value="VM status: running\r\n")
    monkeypatch.setattr(pairvm.libvirt_qemu, "qemuMonitorCommand", qmc)
    assert pairvm.monitor("vm1", "info status") == "VM status: running"
    qmc.assert_called_once_with(host.domains["vm1"], "info status",
                                libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)


def test_monitor_reports_a_failed_command(host, monkeypatch):
    host.install("vm1", drbd=drbd_state(role="Primary"), domain="running")
    monkeypatch.setattr(pairvm.libvirt_qemu, "qemuMonitorCommand",
                        mock.Mock(side_effect=libvirt.libvirtError("unknown command: 'foo'")))
    with pytest.raises(CommandExecutionError, match="monitor command failed: unknown command"):
        pairvm.monitor("vm1", "foo")


@pytest.mark.parametrize("domain", [None, "defined"])
def test_monitor_refuses_a_vm_that_is_not_running(host, monkeypatch, domain):
    host.install("vm1", drbd=drbd_state(), domain=domain)
    qmc = mock.Mock()
    monkeypatch.setattr(pairvm.libvirt_qemu, "qemuMonitorCommand", qmc)
    with pytest.raises(CommandExecutionError, match="vm1 is not running on hostA"):
        pairvm.monitor("vm1", "info status")
    qmc.assert_not_called()


# --- print_ssh_forwards ------------------------------------------------------------------------


def test_print_ssh_forwards_lists_the_running_vms_consoles(host):
    host.install("vm1", drbd=drbd_state(role="Primary"), domain="running")
    host.install("vm2", drbd=drbd_state(), domain="defined")
    host.domains["stray"] = LibvirtDomain(host, "stray", "<domain/>")
    host.domains["stray"].active = True
    assert pairvm.print_ssh_forwards() == "ssh -N -L 5901:127.0.0.1:5901 root@10.77.0.11  # vm1"
    host.domains["vm1"].active = False
    assert pairvm.print_ssh_forwards() == "no VM is running on this host"
