"""The pairvm_drbd beacon and the formula's reactor on the lab pair.

The master runs with the reactor configuration of README "Monitoring"
(tests/lab/saltlab.py); the beacon is off in the tests' pillar and turned on
here by the state pairvm.host.watch, then removed again. DRBD is the lab's
shim behind the real drbd-utils: the shim's ``events2`` (following changes
by polling every 0.2 s) and its split brain (both sides StandAlone, the
kernel's split-brain helper run) carry the claims about DRBD's side.
"""

import json
import os
import subprocess
import time

import pytest

from tests.integration.test_vm_lifecycle import HOSTS, drbd, hv, wait_for, wait_in_sync
from tests.lab.hosts import DATA
from tests.lab.namespaces import NS_DIR

WATCH_PILLAR = {"pairvm": {"watch": {"beacon": True, "debounce": 1, "max_delay": 20}}}


def create(lab, salt_run_cli, salt_cli, name, home, state="stopped"):
    ret = salt_run_cli.run("pairvm.create", name, home, "128", "32M", f"state={state}",
                           f"hypervisor_options={json.dumps(hv(name))}")
    assert ret.returncode == 0, ret
    wait_in_sync(lab, salt_cli, name)


def readers(lab):
    """{host: [pid]} of the drbdsetup events2 followers, by the UTS namespace each runs in
    (one PID namespace: pgrep alone sees both hosts' processes)."""
    pids = subprocess.run(["pgrep", "-f", "drbdsetup events2 all"], capture_output=True, text=True,
                          check=False).stdout.split()
    found = {name: [] for name in HOSTS}
    hosts = {os.stat(NS_DIR / f"{name}.uts").st_ino: name for name in HOSTS}
    for pid in pids:
        try:
            found[hosts[os.stat(f"/proc/{pid}/ns/uts").st_ino]].append(pid)
        except (OSError, KeyError):  # ended meanwhile, or not a lab host's
            continue
    return found


@pytest.fixture(scope="module")
def beacons(salt_cli, lab, minions):
    ret = salt_cli.run("state.apply", "pairvm.host.watch", f"pillar={json.dumps(WATCH_PILLAR)}",
                       minion_tgt="*")
    assert ret.returncode == 0, {h: [r.get("comment") for r in states.values()]
                                 for h, states in ret.data.items()}
    wait_for(lambda: all(len(r) == 1 for r in readers(lab).values()), "one events2 reader per host")
    yield
    for name in HOSTS:
        ret = salt_cli.run("beacons.delete", "pairvm_drbd", "save=True", minion_tgt=name)
        assert ret.returncode == 0, ret
    wait_for(lambda: not any(readers(lab).values()), "the readers to end with the beacon")


@pytest.fixture(scope="module")
def wx1(lab, salt_run_cli, salt_cli, beacons):
    create(lab, salt_run_cli, salt_cli, "wx1", "hostA")
    yield "wx1"
    salt_run_cli.run("pairvm.destroy", "wx1", "confirm=True", "force=True")


def link(name, up):
    flag = DATA / "drbd" / f"{name}.link-down"
    if up:
        flag.unlink(missing_ok=True)
    else:
        flag.touch()


def wait_event(event_listener, salt_master, tag, after, timeout):
    found = event_listener.wait_for_events([(salt_master.id, tag)], after_time=after, timeout=timeout)
    assert found.found_all_events, f"no {tag} within {timeout}s"
    return min(found.matches, key=lambda event: event.stamp)  # (a set)


def test_a_cut_link_reaches_the_bus_within_10_seconds(wx1, lab, salt_cli, salt_master, event_listener):
    start = time.time()
    link(wx1, up=False)
    try:
        event = wait_event(event_listener, salt_master,
                           f"salt/beacon/hostA/pairvm_drbd/{wx1}/connection_lost", start, 10)
        assert event.data["connection"] == "Connecting" and event.data["split_brain"] is False
        assert event.data["id"] == "hostA"
        assert time.time() - start < 10
    finally:
        link(wx1, up=True)
    wait_event(event_listener, salt_master, f"salt/beacon/hostA/pairvm_drbd/{wx1}/connection_restored",
               start, 30)
    wait_in_sync(lab, salt_cli, wx1, "wx1 in sync again")


def test_a_plain_disconnect_is_reconnected_by_the_reactor(wx1, lab, salt_cli, salt_master, event_listener):
    start = time.time()
    assert salt_cli.run("drbd.disconnect", wx1, minion_tgt="hostB").returncode == 0
    assert drbd(salt_cli, "hostB", wx1)["connection"] == "StandAlone"
    wait_event(event_listener, salt_master, f"salt/beacon/hostB/pairvm_drbd/{wx1}/connection_lost", start, 10)

    def reconnect_job():
        returns = event_listener.get_events([(salt_master.id, "salt/job/*/ret/hostB")], after_time=start)
        return next((e for e in returns if e.data.get("fun") == "pairvm.reconnect"), None)

    job = wait_for(reconnect_job, "the reactor's pairvm.reconnect on hostB", timeout=30)
    assert job.data["success"] is True, job.data
    wait_in_sync(lab, salt_cli, wx1, "the reactor to reconnect wx1", timeout=30)


@pytest.fixture
def sbx1(lab, salt_run_cli, salt_cli, beacons):
    create(lab, salt_run_cli, salt_cli, "sbx1", "hostA")
    yield "sbx1"
    link("sbx1", up=True)
    for host in HOSTS:
        salt_cli.run("drbd.secondary", "sbx1", minion_tgt=host)
    salt_run_cli.run("pairvm.destroy", "sbx1", "confirm=True", "force=True")


def head(lab, host, minor):
    return lab.hosts[host].run(["sh", "-c", f"head -c 4096 /dev/drbd{minor} | sha256sum"]).stdout.split()[0]


def test_a_split_brain_is_an_alert_and_nothing_is_discarded(sbx1, salt_cli, salt_run_cli, salt_master,
                                                           event_listener, lab):
    link(sbx1, up=False)
    wait_for(lambda: all(drbd(salt_cli, h, sbx1)["connection"] == "Connecting" for h in HOSTS), "the cut")
    minor = drbd(salt_cli, "hostA", sbx1)["minor"]
    for host, text in (("hostA", "AAAA"), ("hostB", "BBBB")):
        assert salt_cli.run("drbd.primary", sbx1, minion_tgt=host).returncode == 0
        lab.hosts[host].run(["sh", "-c", f"printf {text} | dd of=/dev/drbd{minor} bs=4k conv=sync "
                                         f"oflag=direct status=none"])
    heads = {h: head(lab, h, minor) for h in HOSTS}
    assert heads["hostA"] != heads["hostB"]
    start = time.time()
    link(sbx1, up=True)
    alert = wait_event(event_listener, salt_master, f"pairvm/alert/split_brain/{sbx1}", start, 30)
    assert alert.data["resource"] == sbx1 and "nothing was discarded" in alert.data["message"]
    time.sleep(5)  # the reactor has had its chance to act: it must not have
    for host in HOSTS:
        state = drbd(salt_cli, host, sbx1)
        assert state["connection"] == "StandAlone" and state["split_brain"] is True, (host, state)
    assert {h: head(lab, h, minor) for h in HOSTS} == heads
    verify = salt_run_cli.run("pairvm.verify")
    assert "EDRBDSPLITBRAIN" in {f["code"] for f in verify.data["findings"]}, verify.data


def domstate(host, name):
    return host.run(["virsh", "domstate", name], check=False).stdout.strip()


def test_a_rebooted_host_gets_its_vms_back_from_the_reactor(salt_run_cli, salt_cli, minions, lab, beacons):
    # should run (create starts nothing)
    create(lab, salt_run_cli, salt_cli, "rbx1", "hostB", state="running")
    host = lab.hosts["hostB"]
    try:
        assert salt_cli.run("pairvm.start", "rbx1", minion_tgt="hostB").returncode == 0
        wait_for(lambda: domstate(host, "rbx1") == "running", "rbx1 running on hostB")
        minion = minions["hostB"]
        minion.terminate()
        # what a reboot leaves: no domain running, the resource down
        host.run(["virsh", "destroy", "rbx1"], check=False)
        host.run(["drbdadm", "down", "rbx1"])
        minion.start()
        wait_for(lambda: domstate(host, "rbx1") == "running",
                 "the reactor's autostart to start rbx1 on hostB", timeout=90)
        wait_in_sync(lab, salt_cli, "rbx1")
    finally:
        salt_run_cli.run("pairvm.destroy", "rbx1", "confirm=True", "force=True")
