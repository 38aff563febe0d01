"""_modules/pairvm_backup.py against the fake host: who backs up, the plan, the snapshot.

The transfer itself (pv, compressor, ssh, the remote scripts) runs for real in
tests/integration/test_backup.py and bench/backup_throughput.py; its pure
pieces are in tests/unit/utils/test_backup.py.
"""

import json

import pytest

from salt.exceptions import CommandExecutionError
from tests.unit.fakehost import MODULES, drbd_state

pairvm = MODULES["pairvm_backup"]
DEST = "bk@store.example.net:/backup/_NAME.gz"


def test_the_plan_snapshots_sends_and_always_removes(peer):
    peer.install("vm1", drbd=drbd_state(peer_role="Primary"))
    ret = pairvm.backup("vm1", DEST, test=True)
    assert [c.split(" (")[0].split(" |")[0] for c in ret["changes"]] == [
        "lvcreate -s -n vm1-backup -l 20%ORIGIN there/vm1", "pv -L 10240k /dev/there/vm1-backup",
        "lvremove -f there/vm1-backup"]
    assert ret["comment"].startswith("would: ") and peer.actions() == []


def test_the_host_running_the_vm_skips_it_in_all_and_refuses_it_alone(host):
    host.install("vm1", drbd=drbd_state(role="Primary"), domain="running")
    with pytest.raises(CommandExecutionError, match="it runs on this host"):
        pairvm.backup("vm1", DEST, test=True)
    ret = pairvm.backup("all", DEST, test=True)
    assert ret["vms"]["vm1"]["result"] is None and ret["vms"]["vm1"]["comment"].startswith("skipped: it runs")


def test_a_snapshot_left_by_a_killed_backup_is_removed_first(peer):
    peer.install("vm1", drbd=drbd_state(peer_role="Primary"))
    peer.lvs["there/vm1-backup"] = 64
    peer.snapshot_of["there/vm1-backup"] = "vm1"
    ret = pairvm.backup("vm1", DEST, test=True)
    assert ret["changes"][0] == "lvremove -f there/vm1-backup (left by an interrupted backup)"


def test_an_lv_named_like_the_snapshot_that_is_not_one_is_never_removed(peer):
    """A VM may be called <name>-backup: its disc is not the snapshot of <name>."""
    peer.install("vm1", drbd=drbd_state(peer_role="Primary"))
    peer.lvs["there/vm1-backup"] = 64  # another VM's disc, no snapshot of vm1
    with pytest.raises(CommandExecutionError, match="vm1-backup exists and is not a snapshot of there/vm1"):
        pairvm.backup("vm1", DEST)
    assert peer.lvs["there/vm1-backup"] == 64 and peer.actions() == []


def test_without_a_master_the_settings_come_from_this_hosts_view(peer):
    peer.install("vm1", drbd=drbd_state(peer_role="Primary"))
    view = json.loads((peer.machines / "_global").read_text())
    peer.write_view(dict(view, backup={"speed": 0, "compress": "zstd", "key": "/root/.ssh/other"}))
    settings = pairvm.backup_settings()
    assert (settings["speed"], settings["compress"], settings["key"]) == (0, "zstd", "/root/.ssh/other")
    ret = pairvm.backup("vm1", DEST, test=True)
    assert "pv /dev/there/vm1-backup" in ret["changes"][1] and "| zstd |" in ret["changes"][1]
