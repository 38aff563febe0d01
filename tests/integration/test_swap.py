"""Rehoming (salt-run pairvm.swap) between the lab hosts, as an operator runs it.

Real LVM metadata (the LVM shim gives each LV its bytes), the real drbdadm
and drbdmeta on the copied LVs, real salt master and minions. The DRBD shim
stands in for the kernel: it reads DRBD's meta data (UUIDs, flags) from the
backing LV the resource is attached to, and decides from them, by DRBD's
own UUID rules, whether the two sides need a resync. So the shim, not a
kernel, carries the claim "no resync ran": its log of the resource
(``$PVLAB_DATA/drbd/<vm>.json``) has no ``resync`` line and a handshake that
found equal data (``connected (hg=0)``) since the swap began.
"""

import json
import os
import time

import pytest

import salt.utils.yaml
from tests.integration.test_vm_lifecycle import (
    HOSTS,
    boots,
    changed,
    hv,
    in_sync,
    pair_state,
    refusal,
    start_and_wait,
    wait_for,
    wait_in_sync,
)
from tests.lab.drbdshim import state as drbdshim

NAME = "svm1"
FILLER = "svmfill"
DEFINITION = {"home": "hostA", "memory": 128, "disc": "64M", "state": "stopped",
              "hypervisor_options": hv(NAME)}


@pytest.fixture(scope="module")
def vm(pillar_vms, salt_run_cli, salt_cli, lab):
    """A pillar-defined VM homed on hostA, stopped, its disc holding 8 MiB of random bytes."""
    pillar_vms({NAME: DEFINITION})
    ret = salt_run_cli.run("state.orchestrate", "pairvm.orch.apply")
    assert ret.returncode == 0, ret
    wait_in_sync(lab, salt_cli, NAME)
    a = lab.hosts["hostA"]
    a.run(["drbdadm", "primary", NAME])
    a.run(["dd", "if=/dev/urandom", f"of={device(a)}", "bs=1M", "count=8", "conv=fsync", "status=none"])
    a.run(["drbdadm", "secondary", NAME])
    wait_in_sync(lab, salt_cli, NAME)
    yield NAME
    pillar_vms({})
    salt_run_cli.run("pairvm.destroy", NAME, "confirm=True", "force=True")
    for host in HOSTS:  # what a failed test may have left beside the registry's view
        salt_cli.run("pairvm.destroy", NAME, "confirm=True", "force=True", minion_tgt=host)
    lab.hosts["hostB"].run(["lvremove", "-y", f"here/{FILLER}"], check=False)


def record(host):
    return salt.utils.yaml.safe_load(host.run(["cat", f"/machines/{NAME}"]).stdout)


def device(host):
    return f"/dev/drbd{record(host)['drbd_minor']}"


def disc_sums(lab):
    """sha256 of the disc as the VM sees it (/dev/drbdN) on each host."""
    return {h: lab.hosts[h].run(["sh", "-c", f"sha256sum < {device(lab.hosts[h])}"]).stdout.split()[0]
            for h in HOSTS}


def lvs(lab):
    return {h: sorted(f"{r['vg_name']}/{r['lv_name']}" for r in json.loads(lab.hosts[h].run(
        ["lvs", "--reportformat", "json", "-o", "vg_name,lv_name"]).stdout)["report"][0]["lv"]
        if r["lv_name"] == NAME) for h in HOSTS}


def shim_log_since(start):
    """The DRBD shim's log lines of the resource since ``start`` (time.time())."""
    with open(os.path.join(drbdshim.data_dir(), f"{NAME}.json"), encoding="utf-8") as fh:
        lines = json.load(fh)["log"]
    return [line.split(" ", 1)[1] for line in lines if float(line.split(" ", 1)[0]) >= start]


def registry_entry(salt_master):
    path = os.path.join(salt_master.config["cachedir"], "pairvm", "pairs", "default", "registry.json")
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)["vms"][NAME]


def codes(salt_run_cli):
    found = salt_run_cli.run("pairvm.verify", "--out=json").data["findings"]
    return {(f["severity"], f["code"]): f["message"] for f in found if f["vm"] == NAME}


def test_bad_requests_are_refused_and_nothing_changes(vm, salt_run_cli, salt_cli, salt_master, lab):
    before = pair_state(lab, salt_master)
    unknown = salt_run_cli.run("pairvm.swap", "nosuchvm")
    assert unknown.returncode != 0 and "nosuchvm is in no pair's registry" in refusal(unknown)
    assert changed(before, pair_state(lab, salt_master)) == []
    start_and_wait(salt_cli, lab.hosts["hostA"], NAME)
    try:
        running = salt_run_cli.run("pairvm.swap", NAME)
        assert running.returncode != 0
        assert "it is running on this host: stop it (pairvm stop) or live-migrate it" in refusal(running)
    finally:
        assert salt_cli.run("pairvm.stop", NAME, minion_tgt="hostA").returncode == 0
    wait_in_sync(lab, salt_cli, NAME)
    before = pair_state(lab, salt_master)  # the start changed the domain's definition
    drbdshim.set_link(NAME, False)
    try:
        wait_for(lambda: not in_sync(salt_cli, NAME), f"{NAME} disconnected")
        cut = salt_run_cli.run("pairvm.swap", NAME)
        assert cut.returncode != 0 and "both must be Connected and UpToDate" in refusal(cut)
    finally:
        drbdshim.set_link(NAME, True)
    wait_in_sync(lab, salt_cli, NAME)
    assert changed(before, pair_state(lab, salt_master)) == []
    assert "swap" not in registry_entry(salt_master)


def test_swap_moves_the_discs_without_a_resync_and_resumes_after_an_interruption(
        vm, salt_run_cli, salt_cli, salt_master, lab, pillar_vms):
    sums = disc_sums(lab)
    assert len(set(sums.values())) == 1
    planned = salt_run_cli.run("pairvm.swap", NAME, "test=True")
    assert planned.returncode == 0, planned
    assert planned.data["changes"]["hostB"]["changes"] == [
        f"drbdadm down {NAME}", f"lvcreate -n {NAME} here -L 64M",
        f"copy /dev/there/{NAME} to /dev/here/{NAME} (64 MiB, with DRBD's meta data)",
        f"write /machines/{NAME}", f"write /etc/drbd.d/{NAME}.res", f"drbdadm up {NAME}"]
    assert lvs(lab) == {"hostA": [f"here/{NAME}"], "hostB": [f"there/{NAME}"]}
    start = time.time()
    # interrupted: hostB's new LV cannot be made (its VG is full), after hostA has moved its disc
    b_host = lab.hosts["hostB"]
    b_host.run(["lvcreate", "-y", "-n", FILLER, "-l", "100%FREE", "here"])
    try:
        broken = salt_run_cli.run("pairvm.swap", NAME)
        assert broken.returncode != 0, broken
        assert "hostB:" in refusal(broken) and "lvcreate" in refusal(broken), broken
        assert lvs(lab) == {"hostA": [f"here/{NAME}", f"there/{NAME}"], "hostB": [f"there/{NAME}"]}
        assert record(lab.hosts["hostA"])["home"] == "hostB" and record(b_host)["home"] == "hostA"
        assert registry_entry(salt_master)["swap"] == {"to": "hostB"}
        assert ("WARNING", "ESWAPUNFINISHED") in codes(salt_run_cli)
    finally:
        b_host.run(["lvremove", "-y", f"here/{FILLER}"])
    done = salt_run_cli.run("pairvm.swap", NAME)
    assert done.returncode == 0, done
    assert done.data["home"] == "hostB" and done.data["resynced"] is False
    log = shim_log_since(start)
    assert not [line for line in log if "resync" in line or "Sync" in line], log
    assert "connected (hg=0)" in log, log
    assert lvs(lab) == {"hostA": [f"there/{NAME}"], "hostB": [f"here/{NAME}"]}
    assert disc_sums(lab) == sums
    a, b = (lab.hosts[h].run(["cat", f"/machines/{NAME}"]).stdout for h in HOSTS)
    assert a == b and salt.utils.yaml.safe_load(a)["home"] == "hostB"
    entry = registry_entry(salt_master)
    assert entry["home"] == "hostB" and "swap" not in entry
    assert salt_cli.run("pairvm.pillar_record", NAME, minion_tgt="hostA").data["home"] == "hostB"
    again = salt_cli.run("state.apply", "pairvm.vms", minion_tgt="*")
    for states in again.data.values():
        assert not [k for k, s in states.items() if s["changes"] or not s["result"]], states
    message = codes(salt_run_cli)[("WARNING", "EHOMEMOVED")]
    assert f"pairvm:vms:{NAME}:home gives hostA: set home: hostB there" in message
    # the VM starts on its new home, without --away
    start_and_wait(salt_cli, b_host, NAME)
    assert boots(b_host, NAME) >= 1
    assert salt_cli.run("pairvm.stop", NAME, minion_tgt="hostB").returncode == 0
    wait_in_sync(lab, salt_cli, NAME)
    # pillar agrees: no more warning
    pillar_vms({NAME: {**DEFINITION, "home": "hostB"}})
    for host in HOSTS:
        salt_cli.run("saltutil.refresh_pillar", "wait=True", minion_tgt=host)
    assert not {c for c in codes(salt_run_cli) if c[1] in ("EHOMEMOVED", "ESWAPUNFINISHED")}
