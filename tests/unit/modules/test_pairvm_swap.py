"""_modules/pairvm_swap.py against the fake host: a host's part of a swap, each phase and
each state an interruption leaves."""

import os

import pytest

from pairvmlib import rehome, render, schema
from salt.exceptions import CommandExecutionError
from tests.unit.fakehost import DRBD_OPTIONS, MODULES, drbd_state

pairvm = MODULES["pairvm_swap"]
DATA = os.urandom(3 * 2**20 + 5)  # the replica's first bytes; the rest is zeros (sparse)
META = b"DRBD-META-DATA"  # what the end of the LV holds: DRBD 8.4's internal meta data


@pytest.fixture
def vm3(host):
    """vm3, homed on hostA (this host), stopped, in sync; its LV holds DATA and META."""
    host.define("vm3", home="hostA", memory=128, disc="16M")
    rec = host.install("vm3", drbd=drbd_state())
    device = host.lv_device("here/vm3", 16, DATA)
    with open(device, "r+b") as fh:
        fh.seek(16 * 2**20 - len(META))
        fh.write(META)
    host.log.clear()
    return rec


def content(host, lv):
    return (host.root / "dev" / lv).read_bytes()


def test_the_copy_phase_moves_the_disc_with_its_meta_data_and_the_record(host, vm3):
    before = content(host, "here/vm3")
    ret = pairvm.swap("vm3", home="hostB")
    assert ret["changes"] == ["drbdadm down vm3", "lvcreate -n vm3 there -L 16M",
                              "copy /dev/here/vm3 to /dev/there/vm3 (16 MiB, with DRBD's meta data)",
                              f"write {host.machines / 'vm3'}", f"write {host.drbd_dir / 'vm3.res'}",
                              "drbdadm up vm3"]
    assert host.actions() == ["drbd.down", "lvm.lvcreate", "drbd.up"]
    assert content(host, "there/vm3") == before and before.endswith(META)
    assert host.lvs == {"here/vm3": 16, "there/vm3": 16}  # the old LV stays until the finish
    moved = rehome.moved_record(vm3, "hostB")
    assert (host.machines / "vm3").read_text() == schema.dump_record(moved)
    res = (host.drbd_dir / "vm3.res").read_text()
    assert res == render.drbd_resource(moved, DRBD_OPTIONS) != render.drbd_resource(vm3, DRBD_OPTIONS)
    # run again: nothing to do (the record moved, the resource is up on the new LV)
    host.new_job()
    host.log.clear()
    assert pairvm.swap("vm3", home="hostB", resume=True)["changes"] == []
    assert host.actions() == []


def test_test_lists_the_steps_and_changes_nothing(host, vm3):
    files, lvs = host.snapshot(), dict(host.lvs)
    ret = pairvm.swap("vm3", home="hostB", test=True)
    assert ret["changes"][0] == "drbdadm down vm3" and ret["changes"][-1] == "drbdadm up vm3"
    assert host.actions() == [] and host.snapshot() == files and host.lvs == lvs
    assert "vm3" in host.drbd


@pytest.mark.parametrize(("setup", "why"), [
    (lambda h: h.drbd["vm3"].update(drbd_state(connection="Connecting", peer_disk="DUnknown")),
     "DRBD resource vm3 is Connecting with discs UpToDate/DUnknown: a swap copies each host's replica"),
    (lambda h: h.drbd["vm3"].update(drbd_state(peer_disk="Inconsistent")), "both must be Connected and "
                                                                             "UpToDate"),
    (lambda h: h.drbd["vm3"].update(drbd_state(peer_role="Primary")), "Primary on the peer: is it running"),
    (lambda h: h.drbd.pop("vm3"), "DRBD resource vm3 is not up on hostA"),
    (lambda h: h.install("vm3", drbd=drbd_state("Primary"), domain="running"),
     "cannot move home on hostA: it is running on this host: stop it"),
    (lambda h: h.lv_device("there/vm3", 16) and h.lvs.update({"there/vm3": 16}),
     "the LV it would move to exists already"),
])
def test_bad_states_are_refused_and_nothing_changes(host, vm3, setup, why):
    setup(host)
    files, lvs, disc = host.snapshot(), dict(host.lvs), content(host, "here/vm3")
    with pytest.raises(CommandExecutionError, match=why):
        pairvm.swap("vm3", home="hostB")
    assert host.actions() == [] and host.snapshot() == files and host.lvs == lvs
    assert content(host, "here/vm3") == disc


def test_a_bad_home_or_name_is_refused(host, vm3):
    with pytest.raises(CommandExecutionError, match="'hostC' is not a host of VM vm3's pair"):
        pairvm.swap("vm3", home="hostC")
    with pytest.raises(CommandExecutionError, match="no VM|invalid|must be"):
        pairvm.swap("../x", home="hostB")
    assert host.actions() == []


def test_an_interrupted_copy_is_made_again_over_the_partial_one(host, vm3):
    """Interrupted mid-copy (resource down, the new LV half written, the record not moved):
    run again, the copy is made again and the swap goes on."""
    host.drbd.pop("vm3")
    host.lvs["there/vm3"] = 16
    host.lv_device("there/vm3", 16, b"half a copy")
    ret = pairvm.swap("vm3", home="hostB", resume=True)
    assert host.actions() == ["drbd.up"] and ret["changes"][0].startswith("copy /dev/here/vm3")
    assert content(host, "there/vm3") == content(host, "here/vm3")


def test_a_new_lv_of_another_size_is_refused_before_the_copy(host, vm3, monkeypatch):
    """DRBD's meta data is at the end of the LV: a bigger new LV (a VG with bigger extents)
    would put it elsewhere."""
    host.drbd.pop("vm3")
    host.lvs["there/vm3"] = 20
    host.lv_device("there/vm3", 20)
    with pytest.raises(CommandExecutionError, match="LV there/vm3 is 20 MiB and LV here/vm3 16 MiB"):
        pairvm.swap("vm3", home="hostB", resume=True)
    assert host.actions() == [] and (host.machines / "vm3").read_text() == schema.dump_record(vm3)


def test_finish_removes_the_old_lv_only_once_in_sync(host, vm3):
    pairvm.swap("vm3", home="hostB")
    host.drbd["vm3"] = drbd_state(connection="Connecting", peer_disk="DUnknown")
    host.new_job()
    host.log.clear()
    with pytest.raises(CommandExecutionError,
                       match="swap of VM vm3 cannot finish on hostA: .*the old LV is kept until it is"):
        pairvm.swap("vm3", home="hostB", finish=True)
    assert "here/vm3" in host.lvs and host.actions() == []
    host.drbd["vm3"] = drbd_state()
    host.new_job()
    ret = pairvm.swap("vm3", home="hostB", finish=True)
    assert ret["changes"] == ["lvremove here/vm3"] and "here/vm3" not in host.lvs and "there/vm3" in host.lvs
    host.new_job()
    assert pairvm.swap("vm3", home="hostB", finish=True)["changes"] == []


def test_finish_before_the_copy_phase_is_refused(host, vm3):
    with pytest.raises(CommandExecutionError, match="copy phase has not finished"):
        pairvm.swap("vm3", home="hostB", finish=True)
    assert host.actions() == []


def test_the_peer_moves_its_replica_from_there_to_here(peer):
    peer.define("vm3", home="hostA", memory=128, disc="16M")
    peer.install("vm3", drbd=drbd_state())
    peer.lv_device("there/vm3", 16, DATA)
    ret = pairvm.swap("vm3", home="hostB")
    assert "lvcreate -n vm3 here -L 16M" in ret["changes"]
    assert content(peer, "here/vm3") == content(peer, "there/vm3")
    assert schema.load_record((peer.machines / "vm3").read_text())["hosts"]["hostB"]["vg"] == "here"
