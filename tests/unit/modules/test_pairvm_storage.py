"""_modules/pairvm_storage.py against the fake host: resize and split_brain_victim."""


import pytest

from pairvmlib import schema
from salt.exceptions import CommandExecutionError
from tests.unit.fakehost import BAD_NAMES, MODULES, drbd_state

pairvm = MODULES["pairvm_storage"]


# --- resize -------------------------------------------------------------------------------------


def test_resize_refuses_to_shrink(host):
    host.install("vm1", drbd=drbd_state())
    with pytest.raises(CommandExecutionError, match=r"1024 MiB.*512 MiB.*only grows"):
        pairvm.resize("vm1", "512M")
    assert host.actions() == [] and host.lvs == {"here/vm1": 1024}


def test_resize_of_a_missing_lv_is_refused(host):
    host.install("vm1", lv=False, drbd=drbd_state())
    with pytest.raises(CommandExecutionError, match="LV here/vm1 does not exist on hostA"):
        pairvm.resize("vm1", "2G")
    assert host.actions() == []


@pytest.mark.parametrize("size", ["12X", "-5G", "1.5M", True])
def test_resize_refuses_a_bad_size(host, size):
    host.install("vm1", drbd=drbd_state())
    with pytest.raises(CommandExecutionError, match="size"):
        pairvm.resize("vm1", size)
    assert host.actions() == []


def test_resize_to_the_same_size_on_the_peer_changes_nothing(peer):
    peer.install("vm1", drbd=drbd_state())
    assert pairvm.resize("vm1", "1G")["changes"] == []
    assert peer.actions() == []


def test_resize_to_the_same_size_on_the_home_host_changes_nothing(host):
    host.install("vm1", drbd=drbd_state())
    assert pairvm.resize("vm1", 1024)["changes"] == []
    assert host.actions() == []


def test_resize_to_the_same_size_on_the_home_host_with_internal_metadata_changes_nothing(host):
    host.install("vm1", drbd=drbd_state())
    host.md_overhead = 68 * 1024  # DRBD 8.4 internal metadata of a 1 GiB device: 4K + 32K AL + 32K bitmap
    assert pairvm.resize("vm1", "1G")["changes"] == []
    assert host.actions() == []


def grown_record(host, mib):
    """The bytes /machines/vm1 must hold once vm1's disc is ``mib`` MiB: the record create
    wrote, with the new size and nothing else changed."""
    return schema.dump_record({**host.record("vm1"), "disc_mib": mib}).encode()


def test_resize_grows_the_replica_on_the_peer_without_touching_drbd(peer):
    peer.install("vm1", drbd=drbd_state())
    ret = pairvm.resize("vm1", "2G")
    peer.salt["lvm.lvextend"].assert_called_once_with(size="2048M", lvpath="/dev/there/vm1")
    assert peer.actions() == ["lvm.lvextend"]
    assert ret["changes"] == ["lvextend -L 2048M /dev/there/vm1", f"write {peer.machines / 'vm1'}"]
    assert peer.lvs == {"there/vm1": 2048}
    assert (peer.machines / "vm1").read_bytes() == grown_record(peer, 2048)


def test_resize_on_the_home_host_promotes_a_stopped_vm_for_the_drbd_resize(host):
    host.install("vm1", drbd=drbd_state())
    ret = pairvm.resize("vm1", "2G")
    assert host.actions() == ["lvm.lvextend", "drbd.primary", "drbd.resize", "drbd.secondary"]
    host.salt["drbd.primary"].assert_called_once_with("vm1")
    assert ret["changes"] == ["lvextend -L 2048M /dev/here/vm1", "drbdadm primary vm1", "drbdadm resize vm1",
                              "drbdadm secondary vm1", f"write {host.machines / 'vm1'}"]
    assert host.lvs == {"here/vm1": 2048} and host.drbd["vm1"]["role"] == "Secondary"
    assert (host.machines / "vm1").read_bytes() == grown_record(host, 2048)
    # the record is what pairvm reads afterwards (list, backup, a rebuilt peer's size)
    host.new_job()
    assert pairvm.resize("vm1", "2G")["changes"] == []


def test_a_refused_resize_leaves_the_record_as_it_was(host):
    host.install("vm1", drbd=drbd_state())
    before = host.snapshot()
    host.fail("lvm.lvextend", CommandExecutionError("Insufficient free space: 256 extents needed"))
    with pytest.raises(CommandExecutionError, match="Insufficient free space"):
        pairvm.resize("vm1", "2G")
    assert host.snapshot() == before


def test_resize_of_a_running_vm_resizes_drbd_without_a_role_change(host):
    host.install("vm1", drbd=drbd_state(role="Primary"), domain="running")
    pairvm.resize("vm1", "2G")
    assert host.actions() == ["lvm.lvextend", "drbd.resize"]


def test_resize_with_test_lists_without_acting(host):
    host.install("vm1", drbd=drbd_state())
    before = host.snapshot()
    ret = pairvm.resize("vm1", "2G", test=True)
    assert ret["changes"][0] == "lvextend -L 2048M /dev/here/vm1" and len(ret["changes"]) == 5
    assert ret["changes"][-1] == f"write {host.machines / 'vm1'}"
    assert host.actions() == [] and host.lvs == {"here/vm1": 1024} and host.snapshot() == before


def test_resize_refuses_while_drbd_is_down(peer):
    peer.install("vm1", drbd=None)
    with pytest.raises(CommandExecutionError, match="not up"):
        pairvm.resize("vm1", "2G")
    assert peer.actions() == []


# --- split_brain_victim -----------------------------------------------------------------

SPLIT = {"connection": "StandAlone", "peer_role": "Unknown", "peer_disk": "DUnknown", "split_brain": True}


def test_split_brain_victim_keeps_a_full_snapshot_then_discards(peer):
    peer.install("vm1", drbd=drbd_state(**SPLIT))
    ret = pairvm.split_brain_victim("vm1")
    assert peer.actions() == ["lvm.lvcreate", "drbd.connect"]
    (args, kwargs), = peer.calls("lvm.lvcreate")
    assert args[0].startswith("vm1-sb-") and args[1] == "there"
    assert kwargs == {"size": "1024M", "snapshot": "vm1"}
    assert peer.calls("drbd.connect") == [(("vm1",), {"discard_my_data": True})]
    assert f"there/{args[0]}" in ret["comment"] and "hostA" in ret["comment"]
    assert ret["changes"][0] == f"lvcreate -s -n {args[0]} -L 1024M there/vm1"


def test_split_brain_victim_demotes_a_primary_first_and_takes_a_given_size(peer):
    peer.install("vm1", drbd=drbd_state(role="Primary", **SPLIT))
    pairvm.split_brain_victim("vm1", snapshot_size="256M")
    assert peer.actions() == ["lvm.lvcreate", "drbd.secondary", "drbd.connect"]
    assert peer.calls("lvm.lvcreate")[0][1]["size"] == "256M"


def test_split_brain_victim_without_snapshot_only_when_told(peer):
    peer.install("vm1", drbd=drbd_state(**SPLIT))
    ret = pairvm.split_brain_victim("vm1", snapshot=False)
    assert peer.actions() == ["drbd.connect"]
    assert "kept" not in ret["comment"]


def test_split_brain_victim_test_true_lists_the_commands_and_changes_nothing(peer):
    peer.install("vm1", drbd=drbd_state(role="Primary", **SPLIT))
    before = peer.snapshot()
    ret = pairvm.split_brain_victim("vm1", test=True)
    assert peer.actions() == [] and peer.snapshot() == before
    assert [c.split()[0:2] for c in ret["changes"]] == [["lvcreate", "-s"], ["drbdadm", "secondary"],
                                                        ["drbdadm", "connect"]]
    assert ret["comment"].startswith("would: ")


@pytest.mark.parametrize("state, domain, message", [
    (None, None, "DRBD resource vm1 is not up on hostB"),
    (drbd_state(), None, "is Connected with its disc UpToDate, not in split brain: nothing is discarded"),
    (drbd_state(**{**SPLIT, "split_brain": False}), None,
     r"StandAlone.*not in split brain.*drbdadm connect vm1"),
    (drbd_state(**SPLIT), "running", "VM vm1 is running on hostB"),
])
def test_split_brain_victim_refuses_unless_a_split_brain_with_the_vm_stopped(peer, state, domain, message):
    peer.install("vm1", drbd=state, domain=domain)
    with pytest.raises(CommandExecutionError, match=message):
        pairvm.split_brain_victim("vm1")
    assert peer.actions() == []


@pytest.mark.parametrize("kwargs, message", [
    ({"snapshot": "no"}, "snapshot must be True or False"),
    ({"snapshot": False, "snapshot_size": "1G"}, "snapshot_size was given with snapshot=False"),
    ({"snapshot_size": "lots"}, "lots"),
])
def test_split_brain_victim_bad_input_changes_nothing(peer, kwargs, message):
    peer.install("vm1", drbd=drbd_state(**SPLIT))
    with pytest.raises(CommandExecutionError, match=message):
        pairvm.split_brain_victim("vm1", **kwargs)
    assert peer.actions() == []


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_split_brain_victim_bad_name(peer, bad):
    with pytest.raises(CommandExecutionError):
        pairvm.split_brain_victim(bad)
    assert peer.actions() == []


def test_split_brain_victim_whose_snapshot_fails_discards_nothing(peer):
    peer.install("vm1", drbd=drbd_state(**SPLIT))
    peer.fail("lvm.lvcreate", CommandExecutionError("Volume group there has insufficient free space"))
    with pytest.raises(CommandExecutionError, match="insufficient free space"):
        pairvm.split_brain_victim("vm1")
    assert peer.actions() == ["lvm.lvcreate"]
