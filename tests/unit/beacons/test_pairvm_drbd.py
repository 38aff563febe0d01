"""_beacons/pairvm_drbd.py: one long-lived reader (a real process standing in for drbdsetup),
never blocking, restarted when it ends, debounced events with the tag the reactor matches."""

import os
import time

import pytest

from pairvmlib import drbdevents, layout
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
CONFIG = [{"debounce": 0.3}, {"max_delay": 5}]


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
    drbdevents.TRACKERS.clear()
    yield events, starts
    beacon.close(CONFIG)
    assert beacon.__context__ == {}
    drbdevents.TRACKERS.clear()


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


MINION_SCRIPT = """
import copy, json, sys, time
import salt.beacons, salt.config
extmods, cachedir, events, config = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
opts = salt.config.minion_config(None)
opts.update(extension_modules=extmods, cachedir=cachedir, id="hostA",
            loop_interval=0.05,  # what pytest-salt-factories gives its minions
            beacons={"pairvm_drbd": config})
beacons = salt.beacons.Beacon(opts, {})


def passes(count):  # the minion's handle_beacons, once a second there (0.1 s here)
    tags = []
    for _ in range(count):
        tags += [e["tag"] for e in beacons.process(copy.deepcopy(opts["beacons"]), {})]
        time.sleep(0.1)
    return tags


before = passes(20)
# a pillar refresh: Minion.beacons_refresh closes the beacons and loads them again
beacons.close_beacons()
beacons = salt.beacons.Beacon(opts, {}, interval_map=beacons.interval_map)
with open(events, "a") as fh:  # vm1's link drops while the beacons are rebuilt
    fh.write("change connection name:vm1 peer-node-id:0 conn-name:peer connection:Connecting\\n")
after = passes(20)
beacons.close_beacons()
print(json.dumps({"before": before, "after": after}))
"""
STANDALONE_VM2 = DUMP.replace("name:vm1", "name:vm2").replace("connection:Connected", "connection:StandAlone")


def minion_run(tmp_path, drbdsetup, config):
    """Salt's own Beacon, as the minion runs it, over the beacon synced into an extmods tree."""
    import json
    import shutil
    import subprocess
    import sys

    from tests.unit.conftest import REPO

    events, _ = drbdsetup
    events.write_text(DUMP.replace("exists -\n", "") + STANDALONE_VM2)
    extmods = tmp_path / "extmods"
    (extmods / "beacons").mkdir(parents=True)
    shutil.copy(REPO / "_beacons" / "pairvm_drbd.py", extmods / "beacons")
    shutil.copytree(REPO / "_utils" / "pairvmlib", extmods / "utils" / "pairvmlib")
    res = subprocess.run([sys.executable, "-c", MINION_SCRIPT, str(extmods), str(tmp_path / "cache"),
                          str(events), json.dumps(config)],
                         capture_output=True, text=True, check=False, cwd=tmp_path, timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.splitlines()[-1])


def test_a_refresh_of_the_minions_beacons_reports_nothing_twice_and_loses_nothing(tmp_path, drbdsetup):
    """Salt rebuilds the beacons (and their __context__) on every pillar or module refresh: vm2,
    StandAlone from the start, is reported once; vm1's change during the rebuild still comes; each
    loader had its own reader and close() ended it."""
    _, starts = drbdsetup
    tags = minion_run(tmp_path, drbdsetup, CONFIG)
    assert tags["before"] == ["salt/beacon/hostA/pairvm_drbd/vm2/connection_lost"]
    assert tags["after"] == ["salt/beacon/hostA/pairvm_drbd/vm1/connection_lost"]
    assert starts.read_text().splitlines() == ["events2 all", "events2 all"]


def test_salts_interval_counts_passes_of_loop_interval(tmp_path, drbdsetup):
    """Why the formula sets no ``interval``: Salt counts it in passes of ``loop_interval`` seconds
    (0.05 here), so ``interval: 1`` is a run every 20 passes: in the 40 passes the beacon ran once
    (it started its reader) and reported nothing, as a debounced change needs a second run (the
    positive control of the test above, where it runs on every pass)."""
    _, starts = drbdsetup
    tags = minion_run(tmp_path, drbdsetup, [{"interval": 1}, *CONFIG])
    assert tags == {"before": [], "after": []}
    assert starts.read_text().splitlines() == ["events2 all"]
