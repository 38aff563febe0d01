"""pairvmlib.backupstate: the backup state file the metrics read, kept by pairvm.backup."""

import json

import pytest

from pairvmlib import backupstate, layout
from pairvmlib.errors import Failed


@pytest.fixture(autouse=True)
def state_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(layout, "STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


class NotHere(Failed):
    why = "its peer runs it"


def backup_one(outcome):
    def one(host, record, destination, settings, on_running_host, test):
        if isinstance(outcome, Exception):
            raise outcome
        return outcome
    return backupstate.recorded(one)


def call(fn, name="vm1", test=False):
    return fn(None, {"name": name}, "u@h:/p", {}, False, test)


def test_success_then_failure_keeps_the_last_success():
    assert backupstate.read() == {}
    call(backup_one({"bytes": 4096, "sha256": "x"}))
    first = backupstate.read()["vm1"]
    assert first["result"] is True and first["size"] == 4096 and first["last_success"] == first["ended"]
    with pytest.raises(Failed):
        call(backup_one(Failed("ssh failed")))
    second = backupstate.read()["vm1"]
    assert second["result"] is False and second["error"] == "ssh failed"
    assert second["last_success"] == first["last_success"] and second["size"] == 4096
    assert second["duration"] >= 0


def test_a_dry_run_and_a_refusal_are_not_attempts(state_dir):
    call(backup_one({"bytes": 1}), test=True)
    with pytest.raises(NotHere):
        call(backup_one(NotHere("not here")))
    assert backupstate.read() == {} and not (state_dir / backupstate.FILE).exists()


def test_vms_are_kept_apart_and_the_file_is_json(state_dir):
    call(backup_one({"bytes": 1}), "vm1")
    call(backup_one({"bytes": 2}), "vm2")
    data = json.loads((state_dir / backupstate.FILE).read_text())
    assert {vm: s["size"] for vm, s in data.items()} == {"vm1": 1, "vm2": 2}


def test_an_unreadable_file_reads_as_no_backups(state_dir):
    state_dir.mkdir()
    (state_dir / backupstate.FILE).write_text("{not json")
    assert backupstate.read() == {}
