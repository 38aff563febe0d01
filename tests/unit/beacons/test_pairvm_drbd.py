"""_beacons/pairvm_drbd.py: one long-lived reader (a real process standing in for drbdsetup),
never blocking, restarted when it ends, debounced events with the tag the reactor matches."""

import os
import time

import pytest

from pairvmlib import layout
from tests.unit.conftest import load

beacon = load("_beacons/pairvm_drbd.py", "unit_pairvm_drbd_beacon")

DUMP = (
    "exists resource name:vm1 role:Primary suspended:no\n"
    "exists connection name:vm1 peer-node-id:0 conn-name:peer connection:Connected role:Secondary\n"
    "exists device name:vm1 volume:0 minor:3 disk:UpToDate\n"
    "exists peer-device name:vm1 peer-node-id:0 conn-name:peer volume:0 replication:Established"
    " peer-disk:UpToDate resync-suspended:no\n"
    "exists -\n"
)
CONFIG = [{"interval": 1}, {"debounce": 0.3}, {"max_delay": 5}]


@pytest.fixture
def drbdsetup(tmp_path, monkeypatch):
    """``drbdsetup`` on PATH: records each start, then follows an events file as events2 follows DRBD."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    events, starts = tmp_path / "events", tmp_path / "starts"
    events.write_text(DUMP)
    script = bindir / "drbdsetup"
    script.write_text(f'#!/bin/sh\necho "$*" >> {starts}\nexec tail -s 0.05 -n +1 -f {events}\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setattr(layout, "SPLIT_BRAIN_DIR", str(tmp_path / "split-brain"))
    beacon.__context__ = {}
    yield events, starts
    beacon.close(CONFIG)
    assert beacon.__context__ == {}


def run_until(predicate, timeout=10):
    found = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        started = time.monotonic()
        found += beacon.beacon(CONFIG)
        assert time.monotonic() - started < 0.5  # never waits for the reader
        if predicate(found):
            return found
        time.sleep(0.1)
    raise AssertionError(f"no such events: {found}")


def test_validate():
    assert beacon.validate(CONFIG)[0] is True
    for bad in ([{"debounce": "2"}], [{"max_delay": -1}], "x", [{"debounce": True}]):
        ok, why = beacon.validate(bad)
        assert ok is False, bad


def test_one_reader_for_all_runs_and_debounced_events(drbdsetup):
    events, starts = drbdsetup
    for _ in range(5):
        assert beacon.beacon(CONFIG) == []
        time.sleep(0.1)
    with events.open("a") as fh:
        fh.write("change connection name:vm1 peer-node-id:0 conn-name:peer connection:StandAlone"
                 " role:Unknown\n")
    found = run_until(lambda f: any(e["event"] == "connection_lost" for e in f))
    lost = next(e for e in found if e["event"] == "connection_lost")
    assert lost["tag"] == "vm1/connection_lost" and lost["connection"] == "StandAlone"
    assert lost["split_brain"] is False
    assert starts.read_text().splitlines() == ["events2 all"]


def test_a_split_brain_marked_by_the_handler(drbdsetup, tmp_path):
    events, _ = drbdsetup
    beacon.beacon(CONFIG)
    (tmp_path / "split-brain").mkdir()
    (tmp_path / "split-brain" / "vm1").write_text("")
    with events.open("a") as fh:
        fh.write("change connection name:vm1 peer-node-id:0 conn-name:peer connection:StandAlone\n")
    found = run_until(lambda f: any(e["event"] == "split_brain" for e in f))
    assert next(e for e in found if e["event"] == "connection_lost")["split_brain"] is True


def test_a_reader_that_ends_is_started_again(drbdsetup):
    _, starts = drbdsetup

    def started(count):
        return lambda found: starts.exists() and len(starts.read_text().splitlines()) == count

    run_until(started(1))
    first = beacon.__context__[beacon.READER].proc
    first.kill()
    first.wait()
    run_until(started(2))
    assert beacon.__context__[beacon.READER].proc.pid != first.pid
    assert first.stdout.closed


LOADER_SCRIPT = """
import sys, salt.config, salt.loader
opts = salt.config.minion_config(None)
opts["extension_modules"], opts["cachedir"] = sys.argv[1], sys.argv[2]
loaded = salt.loader.beacons(opts, {})
print("pairvm_drbd.beacon" in loaded, loaded.missing_fun_string("pairvm_drbd.beacon"))
"""


def test_salts_beacons_loader_loads_it_from_the_synced_tree(tmp_path):
    """Salt's beacons loader does not put the synced _utils on sys.path (the execution
    modules' loader does): the beacon finds pairvmlib beside itself, in a fresh process."""
    import shutil
    import subprocess
    import sys

    from tests.unit.conftest import REPO

    extmods = tmp_path / "extmods"
    (extmods / "beacons").mkdir(parents=True)
    shutil.copy(REPO / "_beacons" / "pairvm_drbd.py", extmods / "beacons")
    shutil.copytree(REPO / "_utils" / "pairvmlib", extmods / "utils" / "pairvmlib")
    res = subprocess.run([sys.executable, "-c", LOADER_SCRIPT, str(extmods), str(tmp_path / "cache")],
                         capture_output=True, text=True, check=False, cwd=tmp_path)
    assert res.stdout.startswith("True"), res.stdout + res.stderr
