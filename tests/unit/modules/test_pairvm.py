"""_modules/pairvm.py (the VM lifecycle) against the fake host: create, destroy, start, stop,
suppress, autostart; and the names every pairvm function checks first."""

import copy
import json
import re
import stat
import xml.etree.ElementTree as ET

import pytest

from pairvmlib import render, schema
from salt.exceptions import CommandExecutionError
from tests.unit.conftest import FakeClock
from tests.unit.fakehost import (
    BAD_NAMES,
    DRBD_OPTIONS,
    MODULES,
    MUTATING,
    PAIRVM,
    Host,
    drbd_calls,
    drbd_state,
)

pairvm = MODULES["pairvm"]


# --- names are checked before anything else -----------------------------------------------------

NAMED_CALLS = {
    "create": lambda n: PAIRVM.create(n),
    "create_test": lambda n: PAIRVM.create(n, test=True),
    "destroy": lambda n: PAIRVM.destroy(n, confirm=True, force=True),
    "start": lambda n: PAIRVM.start(n, away=True, disconnected=True),
    "stop": lambda n: PAIRVM.stop(n),
    "resize": lambda n: PAIRVM.resize(n, "2G"),
    "cdrom": lambda n: PAIRVM.cdrom(n, eject=True),
    "serial": lambda n: PAIRVM.serial(n),
    "suppress": lambda n: PAIRVM.suppress(n),
    "monitor": lambda n: PAIRVM.monitor(n, "info status"),
    "pillar_record": lambda n: PAIRVM.pillar_record(n),
}


@pytest.mark.parametrize("bad", BAD_NAMES)
@pytest.mark.parametrize("function", sorted(NAMED_CALLS))
def test_invalid_names_are_refused_before_anything_runs(host, function, bad):
    (host.machines / "all").write_text("a file that must not be read\n")
    before = host.snapshot()
    with pytest.raises(CommandExecutionError, match="must be|reserved"):
        NAMED_CALLS[function](bad)
    assert host.log == []
    host.opened.assert_not_called()
    assert host.snapshot() == before


# --- pillar_record ------------------------------------------------------------------------------


def test_pillar_record_is_the_resolved_record_of_the_data_model(host):
    record = pairvm.pillar_record("vm1")
    assert record["hosts"] == {
        "hostA": {"admin_ip": "10.77.0.11", "replication_ip": "10.78.0.11", "vg": "here"},
        "hostB": {"admin_ip": "10.77.0.12", "replication_ip": "10.78.0.12", "vg": "there"},
    }
    assert (record["peer"], record["disc_mib"], record["ip"], record["prefix"], record["gateway"]) == (
        "hostB", 1024, "10.79.0.5", 24, "10.79.0.1")
    assert (record["drbd_port"], record["drbd_minor"], record["vnc_display"]) == (7800, 0, 1)
    assert (record["domain_type"], record["state"], record["suppress"]) == ("qemu", "running", False)


def test_pillar_record_keeps_the_disc_size_resize_recorded(host):
    host.pillar["pairvm"]["resized"] = {"vm1": 2048, "vm2": 1024}  # vm2's pillar disc is bigger
    assert pairvm.pillar_record("vm1")["disc_mib"] == 2048
    assert pairvm.pillar_record("vm2")["disc_mib"] == host.record("vm2")["disc_mib"] > 1024


def test_pillar_record_takes_the_home_swap_recorded(host):
    host.pillar["pairvm"]["homes"] = {"vm1": "hostB"}
    rec = pairvm.pillar_record("vm1")
    assert (rec["home"], rec["peer"]) == ("hostB", "hostA")
    assert rec["hosts"]["hostB"]["vg"] == "here" and rec["hosts"]["hostA"]["vg"] == "there"
    assert pairvm.pillar_record("vm2")["home"] == "hostB"


@pytest.mark.parametrize("key, value, message", [
    ("resized", {"vm1": "2G"}, r"resized\.vm1: must be a whole number of MiB"),
    ("resized", {"vm1": 8}, r"resized\.vm1: must be a whole number of MiB from 16 to"),
    ("resized", ["vm1"], "resized: must be a mapping"),
    ("homes", {"vm1": "hostC"}, r"homes\.vm1: must be one of hostA, hostB, got 'hostC'"),
    ("homes", ["vm1"], "homes: must be a mapping"),
])
def test_pillar_record_refuses_a_bad_resized_or_homes_value(host, key, value, message):
    host.pillar["pairvm"][key] = value
    with pytest.raises(CommandExecutionError, match=message):
        pairvm.pillar_record("vm1")


def test_create_refuses_a_home_changed_without_swap_and_changes_nothing(host):
    """Pillar's home of vm1 changed from hostA to hostB by hand: the disc is still LV here/vm1
    here. create (the VM states) must not make an empty there/vm1 beside it."""
    host.install("vm1", drbd=drbd_state())
    host.pillar["pairvm"]["vms"]["vm1"]["home"] = "hostB"
    files, lvs = host.snapshot(), dict(host.lvs)
    with pytest.raises(CommandExecutionError, match="disc on hostA is LV here/vm1, not there/vm1: its home "
                                                    "changed without pairvm.swap"):
        pairvm.create("vm1")
    assert host.actions() == [] and host.snapshot() == files and host.lvs == lvs


def test_the_vm_state_keeps_a_size_resize_recorded_and_would_undo_an_unrecorded_one(host):
    """What salt-run pairvm.resize leaves: LV and record grown, the size in pillar ``resized``.
    A state.apply pairvm.vms (pairvm.create) then changes nothing; without ``resized`` it
    would write the pillar's smaller size back into the record."""
    host.install("vm1", drbd=drbd_state())
    (host.drbd_dir / "global_common.conf").write_text(render.drbd_global_common(DRBD_OPTIONS))
    host.lvs["here/vm1"] = 2048
    grown = schema.dump_record({**host.record("vm1"), "disc_mib": 2048})
    (host.machines / "vm1").write_text(grown)
    host.pillar["pairvm"]["resized"] = {"vm1": 2048}
    assert pairvm.create("vm1")["changes"] == []
    del host.pillar["pairvm"]["resized"]
    host.new_job()
    assert pairvm.create("vm1", test=True)["changes"] == [f"write {host.machines}/vm1"]
    assert (host.machines / "vm1").read_text() == grown


# --- create -------------------------------------------------------------------------------------


def test_create_with_test_lists_the_exact_commands_and_changes_nothing(host):
    before = host.snapshot()
    ret = pairvm.create("vm1", test=True)
    assert ret["changes"] == [
        "lvcreate -n vm1 here -L 1024M",
        f"write {host.drbd_dir}/global_common.conf",
        f"write {host.drbd_dir}/vm1.res",
        "drbdadm create-md --force vm1",
        "drbdadm up vm1",
        "drbdadm primary --force vm1",
        "drbdadm secondary vm1",
        f"write {host.machines}/vm1",
    ]
    assert ret["comment"].startswith("would")
    assert host.actions() == []
    host.salt["drbd.check_config"].assert_not_called()
    assert host.snapshot() == before
    assert host.lvs == {} and host.drbd == {}


def test_create_on_the_home_host_builds_storage_config_and_makes_it_the_sync_source(host):
    ret = pairvm.create("vm1")
    record = host.record("vm1")
    # force=True (--yes): a new LV may start with a removed one's signatures; wipe them
    host.salt["lvm.lvcreate"].assert_called_once_with("vm1", "here", size="1024M", force=True)
    assert host.lvs == {"here/vm1": 1024}
    res = host.drbd_dir / "vm1.res"
    assert stat.S_IMODE(res.stat().st_mode) == 0o600
    assert res.read_text() == render.drbd_resource(record, DRBD_OPTIONS)
    assert 'on "hostA"' in res.read_text() and "disk /dev/here/vm1;" in res.read_text()
    assert "address 10.78.0.12:7800;" in res.read_text() and "disk /dev/there/vm1;" in res.read_text()
    assert (host.drbd_dir / "global_common.conf").read_text() == render.drbd_global_common(DRBD_OPTIONS)
    machine = host.machines / "vm1"
    assert machine.read_text() == schema.dump_record(record)
    assert schema.load_record(machine.read_text(), strict=True)["hosts"]["hostA"]["vg"] == "here"
    assert drbd_calls(host) == [
        ("drbd.create_md", ("vm1",), {}),
        ("drbd.up", ("vm1",), {}),
        ("drbd.primary", ("vm1",), {"force": True}),
        ("drbd.secondary", ("vm1",), {}),
    ]
    assert host.actions()[0] == "lvm.lvcreate"
    assert host.drbd["vm1"]["role"] == "Secondary"
    assert len(ret["changes"]) == 8 and not ret["comment"].startswith("would")


def test_create_on_the_peer_uses_the_replica_vg_and_never_promotes(peer):
    pairvm.create("vm1")
    peer.salt["lvm.lvcreate"].assert_called_once_with("vm1", "there", size="1024M", force=True)
    assert [n for n, _, _ in drbd_calls(peer)] == ["drbd.create_md", "drbd.up"]
    peer.salt["drbd.primary"].assert_not_called()
    assert schema.load_record((peer.machines / "vm1").read_text()) == peer.record("vm1")
    # both hosts render the same resource file
    assert (peer.drbd_dir / "vm1.res").read_text() == render.drbd_resource(peer.record("vm1"), DRBD_OPTIONS)


def test_create_run_again_changes_nothing(host):
    pairvm.create("vm1")
    done = len(host.log)
    before = host.snapshot()
    host.new_job()
    ret = pairvm.create("vm1")
    assert ret["changes"] == []
    assert [n for n, _, _ in host.log[done:] if n in MUTATING] == []
    assert host.snapshot() == before
    host.new_job()
    assert pairvm.create("vm1", test=True)["changes"] == []


def test_create_on_an_existing_lv_never_wipes_or_force_promotes_it(host):
    """After a reboot (LV there, DRBD down) create only brings the resource up."""
    host.install("vm1", drbd=None)
    (host.drbd_dir / "global_common.conf").write_text(render.drbd_global_common(DRBD_OPTIONS))
    ret = pairvm.create("vm1")
    assert ret["changes"] == ["drbdadm up vm1"]
    assert host.actions() == ["drbd.up"]


def test_create_rewrites_a_machines_file_that_pillar_changed(host):
    host.install("vm1", drbd=drbd_state())
    (host.drbd_dir / "global_common.conf").write_text(render.drbd_global_common(DRBD_OPTIONS))
    host.pillar["pairvm"]["vms"]["vm1"]["memory"] = 384
    ret = pairvm.create("vm1")
    assert ret["changes"] == [f"write {host.machines}/vm1"]
    assert schema.load_record((host.machines / "vm1").read_text())["memory"] == 384
    assert host.actions() == []


def test_create_without_a_drbd_secret_is_refused_and_changes_nothing(host):
    del host.pillar["pairvm"]["drbd_options"]["shared_secret"]
    before = host.snapshot()
    for test in (False, True):
        with pytest.raises(CommandExecutionError, match="no DRBD shared secret for VM vm1's pair: DRBD peers "
                                                        "must authenticate"):
            pairvm.create("vm1", test=test)
    assert host.actions() == [] and host.snapshot() == before


def test_create_has_a_running_resource_take_a_changed_file(host):
    """A rotated secret (or other DRBD settings): the file, then ``drbdadm adjust`` of the running
    resource."""
    host.install("vm1", drbd=drbd_state())
    host.drbd_auth["vm1"] = False
    (host.drbd_dir / "global_common.conf").write_text(render.drbd_global_common(DRBD_OPTIONS))
    host.pillar["pairvm"]["drbd_options"] = dict(DRBD_OPTIONS, shared_secret="rotated-secret")
    changes = [f"write {host.drbd_dir}/vm1.res", "drbdadm adjust vm1"]
    assert pairvm.create("vm1", test=True)["changes"] == changes
    assert host.actions() == []
    host.new_job()
    assert pairvm.create("vm1")["changes"] == changes
    assert 'shared-secret "rotated-secret";' in (host.drbd_dir / "vm1.res").read_text()
    assert host.actions() == ["drbd.adjust"] and host.drbd_auth == {}
    host.new_job()
    assert pairvm.create("vm1")["changes"] == []


def test_create_failing_midway_undoes_what_it_created(host):
    host.fail("drbd.up", CommandExecutionError("'drbdadm up vm1' failed with exit code 10: boom"))
    with pytest.raises(CommandExecutionError, match="drbdadm up vm1"):
        pairvm.create("vm1")
    host.salt["lvm.lvremove"].assert_called_once_with("vm1", "here")
    assert host.lvs == {}
    assert not (host.drbd_dir / "vm1.res").exists()
    assert not (host.machines / "vm1").exists()
    host.salt["drbd.primary"].assert_not_called()
    # nothing half-done is left: the same command finishes once the cause is gone
    del host.failures["drbd.up"]
    host.new_job()
    assert "lvcreate -n vm1 here -L 1024M" in pairvm.create("vm1")["changes"]
    assert host.lvs == {"here/vm1": 1024} and host.drbd["vm1"]["role"] == "Secondary"


@pytest.mark.parametrize("answer", [
    "Error: Please specify only one of size or extents",  # Salt's lvm.lvcreate answers a string
    {"Output from lvcreate": "Volume group \"here\" has insufficient free space"},
])
def test_create_checks_lvcreate_by_what_lvm_reports_not_by_its_message(host, answer):
    """Salt's lvm.lvcreate hides lvcreate's exit code and may return a plain string."""
    host.salt["lvm.lvcreate"].side_effect = lambda *args, **kwargs: answer
    with pytest.raises(CommandExecutionError, match="lvcreate here/vm1 failed: .*(one of size|insufficient)"):
        pairvm.create("vm1")
    assert host.lvs == {} and not (host.drbd_dir / "vm1.res").exists()
    assert not (host.machines / "vm1").exists() and host.drbd == {}


def test_destroy_checks_lvremove_by_what_lvm_reports(host):
    host.install("vm1", drbd=drbd_state())
    claimed = 'Logical volume "vm1" successfully removed'  # what Salt says, though the LV is still there
    host.salt["lvm.lvremove"].side_effect = lambda *args, **kwargs: claimed
    with pytest.raises(CommandExecutionError, match="lvremove here/vm1 failed: .*successfully removed"):
        pairvm.destroy("vm1", confirm=True)
    assert host.lvs == {"here/vm1": 1024}


def test_create_rejected_by_drbdadm_leaves_no_resource_file(host):
    host.fail("drbd.check_config", CommandExecutionError("drbd.d/vm1.res:3: Parse error"))
    with pytest.raises(CommandExecutionError, match="drbdadm rejected the resource file of vm1"):
        pairvm.create("vm1")
    assert not (host.drbd_dir / "vm1.res").exists()
    assert not list(host.drbd_dir.glob("*.pairvm-tmp"))
    host.salt["drbd.up"].assert_not_called()
    host.salt["drbd.create_md"].assert_not_called()
    assert host.lvs == {}
    assert not (host.machines / "vm1").exists()


def test_create_rejected_by_drbdadm_keeps_the_previous_resource_file(host):
    host.install("vm1", drbd=drbd_state(role="Primary"), domain="running")
    old = (host.drbd_dir / "vm1.res").read_text()
    host.pillar["pairvm"]["drbd_options"] = {**DRBD_OPTIONS, "resync_rate": "200M"}
    host.fail("drbd.check_config", CommandExecutionError("drbd.d/vm1.res:9: Parse error"))
    with pytest.raises(CommandExecutionError, match="drbdadm rejected the resource file of vm1"):
        pairvm.create("vm1")
    assert (host.drbd_dir / "vm1.res").exists()
    assert (host.drbd_dir / "vm1.res").read_text() == old


def test_create_refuses_an_lv_smaller_than_the_disc(host):
    host.lvs["here/vm1"] = 512
    before = host.snapshot()
    with pytest.raises(CommandExecutionError,
                       match=r"here/vm1 is 512 MiB.*1024 MiB.*grow it with pairvm.resize"):
        pairvm.create("vm1")
    assert host.actions() == []
    assert host.snapshot() == before
    assert host.lvs == {"here/vm1": 512}


@pytest.mark.parametrize("change, message", [
    (lambda p: p["vms"].pop("vm1"), "VM vm1 is not defined in pillar pairvm:vms"),
    (lambda p: p["allocations"].pop("vm1"), r"no allocation yet.*salt-run pairvm.allocate"),
    (lambda p: p["vms"]["vm1"].__setitem__("memory", "lots"), r"vm 'vm1': memory"),
    (lambda p: p.pop("pair"), "pair: must map exactly two minion ids"),
])
def test_create_refuses_what_pillar_does_not_define_clearly(host, change, message):
    change(host.pillar["pairvm"])
    with pytest.raises(CommandExecutionError, match=message):
        pairvm.create("vm1")
    assert host.log == []
    host.opened.assert_not_called()
    assert not (host.machines / "vm1").exists()


def test_create_refuses_a_host_outside_the_pair(tmp_path, monkeypatch, loader_mock):
    outsider = Host("hostC", tmp_path, monkeypatch, loader_mock)
    with pytest.raises(CommandExecutionError, match=r"this host \(hostC\) is not one of VM vm1's pair"):
        pairvm.create("vm1")
    assert outsider.actions() == []


def test_create_names_the_pillar_render_error(host):
    host.pillar.clear()
    host.pillar["_errors"] = ["Rendering SLS 'base:pairvm' failed: mapping values are not allowed here"]
    with pytest.raises(CommandExecutionError, match="Rendering SLS 'base:pairvm' failed"):
        pairvm.create("vm1")


# --- destroy ------------------------------------------------------------------------------------


@pytest.mark.parametrize("confirm", [False, "yes", 1, None])
def test_destroy_needs_confirm_true(host, confirm):
    host.install("vm1", drbd=drbd_state(), domain="running")
    before = host.snapshot()
    with pytest.raises(CommandExecutionError, match=r"deletes its disc.*confirm=True"):
        pairvm.destroy("vm1", confirm=confirm, force=True)
    assert host.log == []
    host.opened.assert_not_called()
    assert host.snapshot() == before and host.domains["vm1"].active


def test_destroy_refuses_a_running_vm_without_force(host):
    host.install("vm1", drbd=drbd_state(role="Primary"), domain="running")
    before = host.snapshot()
    with pytest.raises(CommandExecutionError, match="vm1 is running here: stop it first, or force=True"):
        pairvm.destroy("vm1", confirm=True)
    assert host.actions() == []
    assert host.snapshot() == before
    assert host.domains["vm1"].active and host.lvs == {"here/vm1": 1024} and "vm1" in host.drbd


def destroy_changes(host):
    return [
        "virsh destroy vm1", "virsh undefine vm1", "drbdadm down vm1", f"rm {host.drbd_dir}/vm1.res",
        "lvremove here/vm1", f"rm {host.machines}/vm1", f"rm {host.suppress_dir}/vm1",
    ]


def test_destroy_with_force_removes_everything_in_order(host):
    host.install("vm1", drbd=drbd_state(role="Primary"), domain="running")
    host.install("vm2", drbd=drbd_state())
    host.lvs["data/vm1"] = 100  # not a pairvm VG: never touched
    host.suppress_dir.mkdir()
    (host.suppress_dir / "vm1").write_text("suppressed\n")
    ret = pairvm.destroy("vm1", confirm=True, force=True)
    assert ret["changes"] == destroy_changes(host)
    assert host.actions() == ["virsh.destroy", "virsh.undefine", "drbd.down", "lvm.lvremove"]
    host.salt["lvm.lvremove"].assert_called_once_with("vm1", "here")
    assert "vm1" not in host.domains and "vm1" not in host.drbd
    assert host.lvs == {"data/vm1": 100, "there/vm2": 2048}
    assert not (host.drbd_dir / "vm1.res").exists() and not (host.machines / "vm1").exists()
    assert not (host.suppress_dir / "vm1").exists()
    assert (host.machines / "vm2").exists() and (host.drbd_dir / "vm2.res").exists()
    host.new_job()
    assert pairvm.destroy("vm1", confirm=True)["changes"] == []
    with pytest.raises(CommandExecutionError, match="^no VM vm1 on this host$"):
        pairvm.destroy("vm1", confirm=True, missing_ok=False)


def test_destroy_removes_the_vms_snapshots_with_it_and_says_so(host):
    """Kept split-brain data and a backup snapshot a killed backup left: they are the VM's data."""
    host.install("vm1", drbd=drbd_state())
    host.define("vm1-backup", home="hostA", memory=64, disc="64M")  # a VM named like the snapshot
    host.install("vm1-backup", drbd=drbd_state())
    for snap in ("vm1-sb-20261127101010", "vm1-backup-x"):
        host.lvs[f"here/{snap}"] = 64
        host.snapshot_of[f"here/{snap}"] = "vm1"
    host.lvs["there/vm1-sb-1"] = 8  # a snapshot of another VG's LV of the same name: not vm1's here
    host.snapshot_of["there/vm1-sb-1"] = "vm1"
    ret = pairvm.destroy("vm1", confirm=True)
    removed = [c for c in ret["changes"] if c.startswith("lvremove")]
    assert removed == ["lvremove here/vm1-backup-x", "lvremove here/vm1-sb-20261127101010",
                       "lvremove here/vm1"]
    assert host.lvs == {"here/vm1-backup": 64, "there/vm1-sb-1": 8}


def test_destroy_looks_in_the_volume_groups_this_host_is_set_up_with(host):
    """Not here/there: the VGs of /machines/_global, also under salt-call --local without pillar."""
    host.install("vm1", drbd=drbd_state())
    host.lvs["fast/vm1"] = host.lvs.pop("here/vm1")
    view = json.loads((host.machines / "_global").read_text())
    host.write_view(dict(view, volume_groups=["fast", "slow"]))
    assert "lvremove fast/vm1" in pairvm.destroy("vm1", confirm=True)["changes"]
    assert host.lvs == {}


def test_destroy_with_test_lists_without_acting(host):
    host.install("vm1", drbd=drbd_state(role="Primary"), domain="running")
    host.suppress_dir.mkdir()
    (host.suppress_dir / "vm1").write_text("suppressed\n")
    before = host.snapshot()
    ret = pairvm.destroy("vm1", confirm=True, force=True, test=True)
    assert ret["changes"] == destroy_changes(host)
    assert ret["comment"].startswith("would")
    assert host.actions() == []
    assert host.snapshot() == before and host.domains["vm1"].active and host.lvs == {"here/vm1": 1024}


def test_destroy_of_a_stopped_vm_on_the_peer_removes_the_replica(peer):
    peer.install("vm1", drbd=drbd_state(), domain="defined")
    pairvm.destroy("vm1", confirm=True)
    peer.salt["lvm.lvremove"].assert_called_once_with("vm1", "there")
    assert peer.actions() == ["virsh.undefine", "drbd.down", "lvm.lvremove"]


# --- start --------------------------------------------------------------------------------------


def test_start_promotes_defines_starts_and_announces(host):
    host.install("vm1", drbd=drbd_state())
    ret = pairvm.start("vm1")
    assert host.actions() == ["drbd.primary", "virsh.define", "virsh.start", "garp"]
    host.salt["drbd.primary"].assert_called_once_with("vm1")
    assert host.domains["vm1"].active and host.drbd["vm1"]["role"] == "Primary"
    root = ET.fromstring(host.defined[-1])
    assert root.findtext("name") == "vm1" and root.get("type") == "qemu"
    assert root.find("devices/disk[@device='disk']/source").get("dev") == "/dev/drbd0"
    graphics = root.find("devices/graphics[@type='vnc']")
    assert (graphics.get("listen"), graphics.get("port")) == ("127.0.0.1", "5901")
    assert {e.get("address") for e in graphics.iter("listen")} <= {"127.0.0.1"}
    assert root.findtext("on_reboot") == "destroy"
    assert root.find("devices/interface/target").get("dev") == "vm-vm1"
    assert root.find("devices/interface/source").get("bridge") == "br0"
    assert root.find("devices/serial/log").get("file") == f"{host.serial_dir}/vm1-serial.log"
    interface, frame = host.frames[-1]
    mac = bytes.fromhex("525400000001")  # vm1's allocated MAC
    ip = bytes([10, 79, 0, 5])
    assert interface == "br0"
    assert frame[:14] == b"\xff" * 6 + mac + b"\x08\x06"  # broadcast, from the VM's MAC, ARP
    assert frame[14:22] == bytes.fromhex("0001080006040001")  # Ethernet/IPv4 request
    assert frame[22:] == mac + ip + bytes(6) + ip  # sender IP == target IP: gratuitous
    assert ret["changes"][-1].startswith("gratuitous ARP for 10.79.0.5 (")


def test_start_redefines_a_defined_domain_keeping_its_uuid(host):
    host.install("vm1", drbd=drbd_state(role="Primary"), domain="defined")
    uuid = host.domains["vm1"].uuid
    pairvm.start("vm1")
    assert host.actions() == ["virsh.define", "virsh.start", "garp"]  # already Primary: no promote
    assert ET.fromstring(host.defined[-1]).findtext("uuid") == uuid


def test_start_with_test_lists_without_acting(host):
    host.install("vm1", drbd=drbd_state())
    before = host.snapshot()
    ret = pairvm.start("vm1", test=True)
    assert ret["changes"] == ["drbdadm primary vm1", "virsh define <domain vm1> && virsh start vm1",
                              ret["changes"][-1]]
    assert ret["changes"][-1].startswith("gratuitous ARP for 10.79.0.5")
    assert host.actions() == [] and host.snapshot() == before and host.defined == []


def test_start_of_a_running_vm_changes_nothing(host):
    host.install("vm1", drbd=drbd_state(role="Primary"), domain="running")
    ret = pairvm.start("vm1")
    assert ret["changes"] == []
    assert host.actions() == []


def test_start_on_the_away_host_needs_away(peer):
    peer.install("vm1", drbd=drbd_state())
    with pytest.raises(CommandExecutionError, match="vm1's home is hostA, not hostB: pass away=True"):
        pairvm.start("vm1")
    assert peer.actions() == []
    peer.new_job()
    pairvm.start("vm1", away=True)
    assert peer.domains["vm1"].active
    assert ET.fromstring(peer.defined[-1]).find("devices/disk/source").get("dev") == "/dev/drbd0"


@pytest.mark.parametrize("state, message", [
    (None, "DRBD resource vm1 is not up on hostA"),
    (drbd_state(connection="StandAlone", peer_role="Unknown", peer_disk="DUnknown", split_brain=True),
     r"split brain.*`pairvm split_brain_victim vm1`"),
    (drbd_state(connection="StandAlone", peer_role="Unknown", peer_disk="DUnknown"),
     r"vm1 is StandAlone, not Connected.*disconnected=True"),
    (drbd_state(peer_role="Primary"), "vm1's disc is Primary on the peer: stop it there first"),
    (drbd_state(disk="Inconsistent", peer_disk="UpToDate"), "disc on hostA is Inconsistent, not UpToDate"),
    (drbd_state(disk="Outdated", connection="Connecting", peer_role="Unknown"), "not UpToDate"),
    (drbd_state(connection="Connecting", peer_role="Unknown", peer_disk="DUnknown"),
     r"vm1 is Connecting, not Connected.*disconnected=True"),
])
def test_start_refuses_an_unsafe_drbd_state(host, state, message):
    host.install("vm1", drbd=state)
    with pytest.raises(CommandExecutionError, match=message):
        pairvm.start("vm1")
    assert host.actions() == [] and host.defined == []


def test_start_on_a_plain_standalone_resource_needs_disconnected(host):
    """StandAlone after ``drbdadm disconnect`` (no split brain): the peer gets no writes, so
    start refuses unless told, and then starts (the old tool's --disconnected)."""
    host.install("vm1", drbd=drbd_state(connection="StandAlone", peer_role="Unknown", peer_disk="DUnknown"))
    with pytest.raises(CommandExecutionError, match="not Connected") as refused:
        pairvm.start("vm1")
    assert "split brain" not in str(refused.value) and host.actions() == []
    pairvm.start("vm1", disconnected=True)
    assert host.domains["vm1"].active and host.actions()[:2] == ["drbd.primary", "virsh.define"]


@pytest.mark.parametrize("state", [
    None,
    drbd_state(connection="StandAlone", peer_role="Unknown", peer_disk="DUnknown", split_brain=True),
    drbd_state(disk="Outdated", connection="Connecting", peer_role="Unknown"),
])
def test_start_disconnected_does_not_override_the_other_checks(host, state):
    host.install("vm1", drbd=state)
    with pytest.raises(CommandExecutionError):
        pairvm.start("vm1", disconnected=True)
    assert host.actions() == []


def test_start_disconnected_runs_a_vm_whose_peer_is_unreachable(host):
    host.install("vm1", drbd=drbd_state(connection="Connecting", peer_role="Unknown", peer_disk="DUnknown"))
    pairvm.start("vm1", disconnected=True)
    assert host.actions() == ["drbd.primary", "virsh.define", "virsh.start", "garp"]


# --- stop ---------------------------------------------------------------------------------------


def test_stop_powers_off_then_demotes(host):
    host.install("vm1", drbd=drbd_state(role="Primary"), domain="running")
    ret = pairvm.stop("vm1")
    assert host.actions() == ["virsh.destroy", "drbd.secondary"]
    assert ret["changes"] == ["virsh destroy vm1", "drbdadm secondary vm1"]
    assert not host.domains["vm1"].active and host.drbd["vm1"]["role"] == "Secondary"


def test_stop_of_a_stopped_vm_changes_nothing(host):
    host.install("vm1", drbd=drbd_state(), domain="defined")
    assert pairvm.stop("vm1")["changes"] == []
    assert host.actions() == []


def test_a_steady_state_apply_asks_libvirt_once_whatever_the_number_of_vms(host):
    """vm_stopped / vm_running of VMs already so (bench/vm_scale.py): one libvirt query per job."""
    host.define("vm3", home="hostA", memory=64, disc="16M")
    host.install("vm1", drbd=drbd_state(role="Primary"), domain="running")
    for name in ("vm2", "vm3"):
        host.install(name, drbd=drbd_state(), domain="defined")
    host.new_job()
    assert [pairvm.stop(name)["changes"] for name in ("vm2", "vm3")] == [[], []]
    assert pairvm.start("vm1")["changes"] == []
    assert host.opened.call_count == 1 and host.actions() == []
    host.new_job()  # a later job asks again: a VM started meanwhile is seen
    host.domains["vm2"].active = True
    host.drbd["vm2"] = drbd_state(role="Primary")
    assert pairvm.stop("vm2")["changes"] == ["virsh destroy vm2", "drbdadm secondary vm2"]
def test_stop_of_a_vm_unknown_here_says_so_and_nothing_else(host):
    with pytest.raises(CommandExecutionError, match="^no VM vm1 on this host$"):
        pairvm.stop("vm1")
    assert host.actions() == []


def test_start_refuses_a_cd_missing_on_this_host_before_promoting(host, tmp_path):
    host.pillar["pairvm"]["vms"]["vm1"]["cdrom"] = str(tmp_path / "gone.iso")
    host.install("vm1", drbd=drbd_state())
    with pytest.raises(CommandExecutionError, match=re.escape(
            f"cdrom: {tmp_path}/gone.iso does not exist on hostA: VM vm1 boots with it; copy it there, "
            f"or eject it (pairvm cdrom vm1 eject)")):
        pairvm.start("vm1")
    assert host.actions() == [] and host.defined == []


def test_a_recorded_cd_wins_over_pillars_until_pillar_changes_its_own(host, tmp_path):
    def refreshed(vm_cdrom, recorded):  # a pillar refresh gives the job a new pillar object
        pairvm_pillar = copy.deepcopy(host.pillar["pairvm"])
        pairvm_pillar["vms"]["vm1"]["cdrom"] = vm_cdrom
        pairvm_pillar["cdroms"] = {"vm1": {"path": recorded, "pillar": None}}
        host.pillar["pairvm"] = pairvm_pillar
        return pairvm.pillar_record("vm1")["cdrom"]

    assert refreshed(None, "/srv/a.iso") == "/srv/a.iso"
    assert refreshed(None, None) is None  # ejected
    assert refreshed("/srv/b.iso", None) == "/srv/b.iso"  # pillar changed since: it wins


def test_stop_demotes_a_primary_left_without_a_vm(host):
    host.install("vm1", drbd=drbd_state(role="Primary"))
    assert pairvm.stop("vm1")["changes"] == ["drbdadm secondary vm1"]
    assert host.actions() == ["drbd.secondary"]


def test_stop_with_test_lists_without_acting(host):
    host.install("vm1", drbd=drbd_state(role="Primary"), domain="running")
    ret = pairvm.stop("vm1", graceful=True, timeout=5, test=True)
    assert ret["changes"] == ["virsh shutdown vm1 (wait 5s)", "drbdadm secondary vm1"]
    assert host.actions() == [] and host.domains["vm1"].active


def test_stop_graceful_waits_for_the_guest(host, monkeypatch):
    monkeypatch.setattr(pairvm, "time", FakeClock())
    host.install("vm1", drbd=drbd_state(role="Primary"), domain="running")
    host.domains["vm1"].polls_after_shutdown = 3
    pairvm.stop("vm1", graceful=True, timeout=10)
    assert host.actions() == ["virsh.shutdown", "drbd.secondary"]
    assert not host.domains["vm1"].active


def test_stop_graceful_fails_when_the_guest_does_not_stop_and_keeps_it_primary(host, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(pairvm, "time", clock)
    host.install("vm1", drbd=drbd_state(role="Primary"), domain="running")
    host.domains["vm1"].polls_after_shutdown = None
    with pytest.raises(CommandExecutionError, match=r"vm1 did not shut down within 0.2s.*without graceful"):
        pairvm.stop("vm1", graceful=True, timeout=0.2)
    assert host.actions() == ["virsh.shutdown"]
    assert host.domains["vm1"].active and host.drbd["vm1"]["role"] == "Primary"
    assert clock.now - 1000.0 < 5


# --- suppress, autostart ---------------------------------------------------


def test_suppress_on_and_off_are_idempotent(host):
    host.install("vm1", drbd=drbd_state())
    flag = host.suppress_dir / "vm1"
    assert pairvm.suppress("vm1")["changes"] == [f"touch {flag}"]
    assert flag.exists()
    assert pairvm.suppress("vm1", on=True)["changes"] == []
    assert flag.exists()
    assert pairvm.suppress("vm1", on=False)["changes"] == [f"rm {flag}"]
    assert not flag.exists()
    assert pairvm.suppress("vm1", on=False)["changes"] == []
    assert host.actions() == []


def test_suppress_with_test_lists_without_acting(host):
    host.install("vm1", drbd=drbd_state())
    flag = host.suppress_dir / "vm1"
    ret = pairvm.suppress("vm1", test=True)
    assert ret["changes"] == [f"touch {flag}"] and ret["comment"].startswith("would: ")
    assert not flag.exists()
    pairvm.suppress("vm1")
    assert pairvm.suppress("vm1", on=False, test=True)["changes"] == [f"rm {flag}"] and flag.exists()


def test_suppress_of_a_vm_not_defined_here_is_refused(host):
    with pytest.raises(CommandExecutionError, match="^no VM vm1 on this host$"):
        pairvm.suppress("vm1")
    assert not host.suppress_dir.exists()


def autostart_pair(host):
    """vm1 (home, DRBD down) and vm6 should start; the others should not."""
    for name, definition in (
        ("vm3", {"home": "hostA", "memory": 128, "disc": "64M", "state": "stopped"}),
        ("vm4", {"home": "hostA", "memory": 128, "disc": "64M", "suppress": True}),
        ("vm5", {"home": "hostA", "memory": 128, "disc": "64M"}),
        ("vm6", {"home": "hostA", "memory": 128, "disc": "64M"}),
        ("vm7", {"home": "hostA", "memory": 128, "disc": "64M"}),
    ):
        host.define(name, **definition)
    host.install("vm1", drbd=None)                       # home, down: up, then start
    host.install("vm2", drbd=None)                       # the peer's VM: up only
    host.install("vm3", drbd=drbd_state())               # state stopped
    host.install("vm4", drbd=drbd_state())               # suppress in pillar
    host.install("vm5", drbd=drbd_state())               # pairvm.suppress
    host.install("vm6", drbd=drbd_state())               # starts
    host.install("vm7", drbd=drbd_state(role="Primary"), domain="running")  # already running
    host.suppress_dir.mkdir()
    (host.suppress_dir / "vm5").write_text("suppressed\n")


def test_autostart_starts_only_home_running_unsuppressed_stopped_vms(host):
    autostart_pair(host)
    results = pairvm.autostart()
    assert sorted(results) == ["vm1", "vm2", "vm3", "vm4", "vm5", "vm6", "vm7"]
    assert {c[0][0] for c in host.calls("drbd.up")} == {"vm1", "vm2"}
    assert sorted(n for n, d in host.domains.items() if d.active) == ["vm1", "vm6", "vm7"]
    assert [ET.fromstring(x).findtext("name") for x in host.defined] == ["vm1", "vm6"]
    assert results["vm1"]["changes"][:2] == ["drbdadm up vm1", "drbdadm primary vm1"]
    assert results["vm2"]["changes"] == ["drbdadm up vm2"]
    for name in ("vm3", "vm4", "vm5", "vm7"):
        assert results[name]["changes"] == [], name
    assert all(r["comment"] == "ok" for r in results.values())
    assert host.drbd["vm2"]["role"] == "Secondary"


def test_autostart_with_test_lists_without_acting(host):
    autostart_pair(host)
    before = host.snapshot()
    results = pairvm.autostart(test=True)
    assert host.actions() == [] and host.snapshot() == before
    assert results["vm6"]["changes"][0] == "drbdadm primary vm6"
    assert results["vm2"]["changes"] == ["drbdadm up vm2"]


def test_autostart_with_test_reports_the_start_of_a_vm_whose_resource_it_brings_up(host):
    host.install("vm1", drbd=None)
    results = pairvm.autostart(test=True)
    assert not results["vm1"]["comment"].startswith("not started"), results["vm1"]
    assert results["vm1"]["changes"] == ["drbdadm up vm1", "pairvm start vm1 (once DRBD is Connected)"]


def test_autostart_reports_a_vm_that_may_not_start_and_goes_on(host):
    host.define("vm6", home="hostA", memory=128, disc="64M")
    host.install("vm1", drbd=drbd_state(connection="StandAlone", peer_role="Unknown", peer_disk="DUnknown",
                                        split_brain=True))
    host.install("vm6", drbd=drbd_state())
    results = pairvm.autostart()
    assert results["vm1"]["comment"].startswith("not started:")
    assert "pairvm split_brain_victim vm1" in results["vm1"]["comment"]
    assert results["vm6"]["comment"] == "ok"
    assert host.domains["vm6"].active and "vm1" not in host.domains


def test_autostart_goes_on_after_a_resource_that_does_not_come_up(host):
    """One broken resource (drbd.up fails) must not keep the VMs after it down."""
    host.define("vm6", home="hostA", memory=128, disc="64M")
    host.install("vm1", drbd=None)
    host.install("vm6", drbd=None)
    real_up = host.salt["drbd.up"].side_effect

    def up(name):
        if name == "vm1":
            raise CommandExecutionError("'drbdadm up vm1' failed with exit code 10: no such device")
        return real_up(name)

    host.salt["drbd.up"].side_effect = up
    results = pairvm.autostart(connect_timeout=0)
    assert results["vm1"]["comment"].startswith("not started: 'drbdadm up vm1' failed")
    assert "vm6" in host.drbd and host.domains["vm6"].active and results["vm6"]["comment"] == "ok"
    assert pairvm.__context__["retcode"] == 1


def test_autostart_reports_a_vm_libvirt_fails_to_start_and_goes_on(host):
    host.define("vm6", home="hostA", memory=128, disc="64M")
    host.install("vm1", drbd=drbd_state())
    host.install("vm6", drbd=drbd_state())
    host.conn.fail_start.add("vm1")
    results = pairvm.autostart()
    assert results["vm1"]["comment"].startswith("not started:")
    assert host.domains["vm6"].active and results["vm6"]["comment"] == "ok"
