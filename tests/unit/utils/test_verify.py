"""salt-run pairvm.verify with the master mocked: both hosts answer pairvm.facts through a fake
LocalClient, and each check is shown to fire on its injected fault, and only then.

The facts of the healthy pair are built from the real schema, allocator and renderer: the
/machines digests are those of the records both hosts would write.
"""

import copy
import json
import re
from pathlib import Path

import pytest

from pairvmlib import alloc, master, render, schema, verify
from tests.unit.conftest import REPO, load, pair_pillar

runner = load("_runners/pairvm.py", "pairvm_runner_verify")

HOSTS = ("hostA", "hostB")
PILLAR = pair_pillar()
UP = {"role": "Secondary", "peer_role": "Secondary", "connection": "Connected",
      "replication": "Established", "disk": "UpToDate", "peer_disk": "UpToDate", "minor": 0,
      "volume": 0, "suspended": "no", "standalone": False, "split_brain": False, "connected": True,
      "syncing": False, "up_to_date": True}
NO_ANSWER = object()




def drbd(**changes):
    state = {**UP, **changes}
    state["standalone"] = state["connection"] == "StandAlone"
    state["split_brain"] = state["standalone"] and state["disk"] not in (None, "Diskless")
    state["connected"] = state["connection"] == "Connected"
    state["up_to_date"] = state["disk"] == "UpToDate" and state["peer_disk"] == "UpToDate"
    return state


class Pair:
    """The master (pillar, registry on disk) and what each host's pairvm.facts answers."""

    def __init__(self, tmp_path, monkeypatch, loader_mock):
        self.pillar = copy.deepcopy(PILLAR)
        self.cachedir = tmp_path / "cache"
        self.registry_path = self.cachedir / "pairvm" / "registry.json"
        opts = {"cachedir": str(self.cachedir), "conf_file": str(tmp_path / "master")}
        loader_mock(runner, salt={}, opts=opts)
        monkeypatch.setattr(runner, "_pillar", lambda minion=None: copy.deepcopy(self.pillar))
        monkeypatch.setattr(master.salt.client, "get_local_client", lambda conf_file=None, **kw: self)
        self.calls = []
        settings, definitions = schema.settings(self.pillar), schema.vms(self.pillar)
        self.registry = alloc.allocate(settings, definitions, {"vms": {}})
        self.save_registry()
        self.facts = {host: self.host_facts(host, settings, definitions) for host in HOSTS}
        self.answers = {}  # host: NO_ANSWER or (retcode, ret) to override the facts

    def host_facts(self, host, settings, definitions):
        machines, lvs, vnc, running = {}, {}, {}, []
        for name, definition in definitions.items():
            record = schema.record(name, definition, self.registry["vms"][name]["alloc"], settings)
            text = schema.dump_record(record)
            vg = record["hosts"][host]["vg"]
            machines[name] = {"digest": render.machines_digest(text), "home": record["home"],
                              "peer": record["peer"], "memory": record["memory"],
                              "state": record["state"], "suppress": record["suppress"],
                              "bridge": record["bridge"], "vnc_display": record["vnc_display"], "vg": vg}
            lvs[f"{vg}/{name}"] = record["disc_mib"]
            if record["home"] == host:
                running.append(name)
                vnc[name] = "127.0.0.1"
        return {
            "host": host, "machines": machines, "suppressed": [],
            "drbd": {name: drbd(role="Primary" if name in running else "Secondary",
                                peer_role="Secondary" if name in running else "Primary")
                     for name in machines},
            "running": sorted(running + ["other-guest"]), "vnc": vnc, "lvs": lvs,
            "volume_groups": {"here": {"size": "1020.00m", "free": "0m"},
                              "there": {"size": "1020.00m", "free": "0m"}},
            "tools_missing": [], "bridges": {"br0": {"present": True, "state": "up"}}, "errors": {},
        }

    def save_registry(self):
        self.registry_path.parent.mkdir(parents=True, exist_ok=True)
        self.registry_path.write_text(json.dumps(self.registry, indent=2, sort_keys=True))

    # the LocalClient ---------------------------------------------------------------------------

    def cmd(self, tgt, fun, arg=(), timeout=None, tgt_type="glob", kwarg=None, full_return=False, **kw):
        self.calls.append({"tgt": tgt, "fun": fun, "arg": list(arg), "tgt_type": tgt_type,
                           "kwarg": dict(kwarg or {}), "timeout": timeout, "full_return": full_return})
        ret = {}
        for host in tgt:
            answer = self.answers.get(host)
            if answer is NO_ANSWER:
                continue
            retcode, value = answer if answer else (0, copy.deepcopy(self.facts[host]))
            ret[host] = {"ret": value, "retcode": retcode, "jid": "1"}
        return ret


@pytest.fixture
def pair(tmp_path, monkeypatch, loader_mock):
    return Pair(tmp_path, monkeypatch, loader_mock)


def codes(result):
    return [(f["severity"], f["code"], f["vm"], f["host"]) for f in result["findings"]]


def assert_fails(result):
    assert result["ok"] is False and result["retcode"] == 1
    assert runner.__context__["retcode"] == 1


# --- a healthy pair ------------------------------------------------------------------------------


def test_a_healthy_pair_has_no_findings(pair):
    result = runner.verify()
    assert result == {"ok": True, "summary": "0 errors, 0 warnings", "lines": [], "findings": [],
                      "retcode": 0}
    assert runner.__context__.get("retcode", 0) == 0


def test_verify_asks_both_hosts_once_in_one_call(pair):
    runner.verify(timeout=15)
    assert pair.calls == [{"tgt": ["hostA", "hostB"], "fun": "pairvm.facts", "arg": [], "tgt_type": "list",
                           "kwarg": {"bridges": ["br0"]}, "timeout": 15, "full_return": True}]


def test_verify_asks_for_every_bridge_the_vms_use(pair):
    pair.pillar["vms"]["vm2"]["bridge"] = "br1"
    runner.verify()
    assert pair.calls[0]["kwarg"] == {"bridges": ["br0", "br1"]}


def test_verify_reads_the_registry_without_locking_or_writing_it(pair):
    before = (pair.registry_path.stat().st_ino, pair.registry_path.stat().st_mtime_ns,
              pair.registry_path.read_bytes())
    runner.verify()
    after = (pair.registry_path.stat().st_ino, pair.registry_path.stat().st_mtime_ns,
             pair.registry_path.read_bytes())
    assert after == before
    assert sorted(p.name for p in pair.registry_path.parent.iterdir()) == ["registry.json"]


def test_verify_without_a_registry_file_is_fine(pair):
    pair.registry_path.unlink()
    assert runner.verify()["ok"] is True


# --- each fault gives its code -----------------------------------------------------------------------


def test_a_machines_file_edited_on_one_host(pair):
    pair.facts["hostB"]["machines"]["vm1"]["digest"] = render.machines_digest("memory: 9999\n")
    result = runner.verify()
    assert codes(result) == [("ERROR", "EMACHINESDIFF", "vm1", None)]
    assert re.match(r"ERROR EMACHINESDIFF vm1: /machines/vm1 differs: hostA sha256 [0-9a-f]{12}, "
                    r"hostB sha256 [0-9a-f]{12}", result["lines"][0])
    assert_fails(result)


def test_drbd_disconnected(pair):
    pair.facts["hostA"]["drbd"]["vm1"] = drbd(role="Primary", connection="WFConnection", peer_role=None,
                                              replication="Off", peer_disk="DUnknown")
    del pair.facts["hostB"]["drbd"]["vm1"]
    result = runner.verify()
    assert codes(result) == [("ERROR", "EDRBDDISCONNECTED", "vm1", "hostA"),
                             ("ERROR", "EDRBDDISCONNECTED", "vm1", "hostB")]
    assert "vm1 is WFConnection, not Connected" in result["lines"][0]
    assert "DRBD resource vm1 is not up" in result["lines"][1]
    assert_fails(result)


def test_drbd_disc_not_up_to_date(pair):
    pair.facts["hostB"]["drbd"]["vm1"] = drbd(disk="Inconsistent", replication="SyncTarget", syncing=True)
    result = runner.verify()
    assert codes(result) == [("ERROR", "EDRBDNOTUPTODATE", "vm1", "hostB")]
    assert result["lines"] == ["ERROR EDRBDNOTUPTODATE vm1@hostB: DRBD disc of vm1 is Inconsistent, "
                               "not UpToDate (resync: SyncTarget)"]


def test_split_brain(pair):
    for host in HOSTS:
        pair.facts[host]["drbd"]["vm1"] = drbd(connection="StandAlone", peer_role=None, replication="Off",
                                               peer_disk="DUnknown")
    result = runner.verify()
    assert codes(result) == [("ERROR", "EDRBDSPLITBRAIN", "vm1", "hostA"),
                             ("ERROR", "EDRBDSPLITBRAIN", "vm1", "hostB")]
    assert result["lines"][0].startswith(
        "ERROR EDRBDSPLITBRAIN vm1@hostA: DRBD resource vm1 is StandAlone with its disc UpToDate: "
        "split brain")
    assert_fails(result)


def test_a_vm_running_on_both_hosts(pair):
    pair.facts["hostB"]["running"].append("vm1")
    pair.facts["hostB"]["vnc"]["vm1"] = "127.0.0.1"
    result = runner.verify()
    assert codes(result) == [("ERROR", "EVMRUNNINGTWICE", "vm1", None)]
    assert result["lines"][0].startswith("ERROR EVMRUNNINGTWICE vm1: running on both hostA and hostB")
    assert_fails(result)


def test_other_guests_of_the_host_are_none_of_verifys_business(pair):
    assert "other-guest" in pair.facts["hostA"]["running"] and "other-guest" in pair.facts["hostB"]["running"]
    assert runner.verify()["findings"] == []


def test_a_volume_group_missing(pair):
    del pair.facts["hostB"]["volume_groups"]["there"]
    result = runner.verify()
    assert codes(result) == [("ERROR", "EVGMISSING", None, "hostB")]
    assert result["lines"] == ["ERROR EVGMISSING @hostB: volume group there does not exist "
                               "(vgcreate there on a disc)"]
    assert_fails(result)


def test_a_tool_missing(pair):
    pair.facts["hostA"]["tools_missing"] = ["pv", "socat"]
    result = runner.verify()
    assert codes(result) == [("ERROR", "ETOOLMISSING", None, "hostA")]
    assert result["findings"][0]["message"].startswith("missing: pv, socat")
    assert_fails(result)


def test_a_bridge_missing(pair):
    pair.facts["hostB"]["bridges"]["br0"] = {"present": False, "state": None}
    result = runner.verify()
    assert codes(result) == [("ERROR", "EBRIDGEMISSING", None, "hostB")]
    assert_fails(result)


def test_a_bridge_the_host_did_not_report_is_missing(pair):
    pair.pillar["vms"]["vm2"]["bridge"] = "br1"  # the hosts' facts only know br0
    assert {c[1:] for c in codes(runner.verify())} >= {("EBRIDGEMISSING", None, "hostA"),
                                                       ("EBRIDGEMISSING", None, "hostB")}


@pytest.mark.parametrize("listen", ["0.0.0.0", "10.77.0.11", "::"])
def test_vnc_not_on_localhost(pair, listen):
    pair.facts["hostB"]["vnc"]["vm2"] = listen
    result = runner.verify()
    assert codes(result) == [("ERROR", "EVNCNOTLOCAL", "vm2", "hostB")]
    assert result["lines"][0].startswith(
        f"ERROR EVNCNOTLOCAL vm2@hostB: VNC listens on {listen}, not 127.0.0.1")
    assert_fails(result)


def test_memory_over_the_cap(pair):
    pair.pillar["memory_cap"] = 512
    result = runner.verify()
    assert codes(result) == [("ERROR", "EMEMCAP", None, None)]
    assert result["lines"] == ["ERROR EMEMCAP pair: the pair's 2 VMs total 768 MiB of memory, over "
                               "pairvm:memory_cap 512 MiB"]
    assert_fails(result)


def test_memory_counts_vms_only_the_hosts_know(pair):
    pair.pillar["memory_cap"] = 1024
    for host in HOSTS:
        pair.facts[host]["machines"]["old"] = {**pair.facts[host]["machines"]["vm1"], "memory": 512}
        pair.facts[host]["drbd"]["old"] = drbd()
    assert ("ERROR", "EMEMCAP", None, None) in codes(runner.verify())


def test_no_memory_cap_means_no_limit(pair):
    pair.pillar["memory_cap"] = 0
    assert runner.verify()["findings"] == []


def test_an_allocation_collision_in_the_registry(pair):
    pair.registry["vms"]["vm2"]["alloc"]["ip"] = pair.registry["vms"]["vm1"]["alloc"]["ip"]
    pair.save_registry()
    result = runner.verify()
    assert codes(result) == [("ERROR", "EALLOCCOLLISION", None, None)]
    assert result["lines"] == ["ERROR EALLOCCOLLISION pair: ip '10.79.0.5' is allocated to more than one "
                               "VM: 'vm1', 'vm2'"]
    assert_fails(result)


def test_an_unreadable_registry_is_reported(pair):
    pair.registry_path.write_text("{not json")
    result = runner.verify()
    assert codes(result) == [("ERROR", "EQUERYFAILED", None, None)]
    assert "cannot read the registry" in result["findings"][0]["message"]


def test_a_host_that_does_not_answer(pair):
    pair.answers["hostB"] = NO_ANSWER
    result = runner.verify(timeout=7)
    assert codes(result) == [("ERROR", "EHOSTDOWN", None, "hostB")]
    assert result["lines"][0].startswith("ERROR EHOSTDOWN @hostB: did not answer pairvm.facts within 7s")
    assert_fails(result)


def test_no_host_answering(pair):
    pair.answers = {host: NO_ANSWER for host in HOSTS}
    assert codes(runner.verify()) == [("ERROR", "EHOSTDOWN", None, "hostA"),
                                      ("ERROR", "EHOSTDOWN", None, "hostB")]


def test_facts_failing_on_a_host_is_reported_as_down(pair):
    pair.answers["hostA"] = (1, "'pairvm.facts' is not available.")
    result = runner.verify()
    assert codes(result) == [("ERROR", "EHOSTDOWN", None, "hostA")]
    assert "pairvm.facts failed: 'pairvm.facts' is not available." in result["lines"][0]
    assert "saltutil.sync_all" in result["lines"][0]


def test_a_failed_query_on_a_host_is_reported_and_its_checks_skipped(pair):
    pair.facts["hostA"]["drbd"] = {}
    pair.facts["hostA"]["errors"] = {"drbd": "'drbdsetup events2 --now all' failed with exit code 20: x"}
    result = runner.verify()
    assert codes(result) == [("ERROR", "EQUERYFAILED", None, "hostA")]
    assert result["lines"] == ["ERROR EQUERYFAILED @hostA: drbd: 'drbdsetup events2 --now all' failed with "
                               "exit code 20: x"]


def test_without_libvirt_on_a_host_where_vms_run_is_not_guessed(pair):
    pair.facts["hostB"].update(running=[], vnc={}, errors={"libvirt": "cannot reach libvirt at qemu:///system"})
    pair.facts["hostA"]["running"].append("vm2")
    assert codes(runner.verify()) == [("ERROR", "EQUERYFAILED", None, "hostB")]


def test_a_machines_file_that_cannot_be_read_is_not_called_missing(pair):
    del pair.facts["hostB"]["machines"]["vm2"]
    pair.facts["hostB"]["errors"] = {"machines/vm2": "cannot read /machines/vm2: Permission denied"}
    result = runner.verify()
    assert codes(result) == [("ERROR", "EQUERYFAILED", "vm2", "hostB")]
    assert result["lines"] == ["ERROR EQUERYFAILED vm2@hostB: machines/vm2: cannot read /machines/vm2: "
                               "Permission denied"]


def test_an_unreadable_machines_file_is_reported(pair):
    pair.facts["hostB"]["machines"]["vm2"]["error"] = "not a mapping of VM settings"
    assert codes(runner.verify()) == [("ERROR", "EQUERYFAILED", "vm2", "hostB")]


# --- VMs missing, unknown, not running -----------------------------------------------------------------


def test_a_vm_missing_on_a_host(pair):
    del pair.facts["hostB"]["machines"]["vm2"]
    result = runner.verify()
    assert codes(result) == [("ERROR", "EVMMISSING", "vm2", "hostB")]
    assert result["lines"][0].startswith("ERROR EVMMISSING vm2@hostB: /machines/vm2 does not exist")
    assert_fails(result)


def test_a_vm_whose_lv_is_missing(pair):
    del pair.facts["hostA"]["lvs"]["there/vm2"]
    result = runner.verify()
    assert codes(result) == [("ERROR", "EVMMISSING", "vm2", "hostA")]
    assert result["lines"] == ["ERROR EVMMISSING vm2@hostA: its disc LV there/vm2 does not exist"]


def test_a_vm_only_in_the_registry_is_expected_too(pair):
    pair.registry["vms"]["gone"] = {"definition": None, "alloc": {"ip": "10.79.0.20"}}
    pair.save_registry()
    assert codes(runner.verify()) == [("ERROR", "EVMMISSING", "gone", "hostA"),
                                      ("ERROR", "EVMMISSING", "gone", "hostB")]


def test_a_vm_unknown_to_pillar_and_registry_is_a_warning(pair):
    fact = pair.facts["hostA"]
    fact["machines"]["old"] = {**fact["machines"]["vm1"], "digest": "0" * 64}
    fact["drbd"]["old"] = drbd()
    fact["lvs"]["here/old"] = 1024
    pair.facts["hostB"]["lvs"]["there/stale"] = 16
    result = runner.verify()
    assert codes(result) == [("WARNING", "EVMUNKNOWN", "old", "hostA"),
                             ("WARNING", "EVMUNKNOWN", "stale", "hostB")]
    assert result["lines"] == [
        "WARNING EVMUNKNOWN old@hostA: not in pillar or the registry, but here: /machines/old, "
        "DRBD resource old, LV here/old",
        "WARNING EVMUNKNOWN stale@hostB: not in pillar or the registry, but here: LV there/stale",
    ]
    assert result["ok"] is True and result["retcode"] == 0 and result["summary"] == "0 errors, 2 warnings"
    assert runner.__context__.get("retcode", 0) == 0


def test_lvs_outside_the_pairvm_volume_groups_are_not_vms(pair):
    pair.facts["hostA"]["lvs"]["system/root"] = 10240
    assert runner.verify()["findings"] == []


def test_a_vm_that_should_run_but_runs_nowhere(pair):
    pair.facts["hostB"]["running"].remove("vm2")
    del pair.facts["hostB"]["vnc"]["vm2"]
    result = runner.verify()
    assert codes(result) == [("ERROR", "EVMNOTRUNNING", "vm2", "hostB")]
    assert result["lines"] == ["ERROR EVMNOTRUNNING vm2@hostB: should run (state running) but runs on "
                               "neither host (pairvm start vm2 on hostB)"]
    assert_fails(result)


@pytest.mark.parametrize("how", ["pillar", "host"])
def test_a_suppressed_vm_not_running_is_a_warning(pair, how):
    pair.facts["hostB"]["running"].remove("vm2")
    del pair.facts["hostB"]["vnc"]["vm2"]
    if how == "pillar":
        pair.pillar["vms"]["vm2"]["suppress"] = True
    else:
        pair.facts["hostB"]["suppressed"] = ["vm2"]
    result = runner.verify()
    assert codes(result) == [("WARNING", "EVMNOTRUNNING", "vm2", "hostB")]
    assert result["ok"] is True and result["retcode"] == 0


def test_a_vm_running_away_from_home_is_running_and_a_warning(pair):
    pair.facts["hostB"]["running"].remove("vm2")
    pair.facts["hostA"]["running"].append("vm2")
    ret = runner.verify()
    assert ret["ok"] and ret["lines"] == [
        "WARNING EVMAWAY vm2@hostA: runs away from its home hostB "
        "(salt-run pairvm.migrate vm2 brings it home)"]


def test_a_dual_primary_window_left_open(pair):
    pair.facts["hostA"]["two_primaries"] = ["vm1"]
    ret = runner.verify()
    assert not ret["ok"] and [(f["code"], f["vm"], f["host"]) for f in ret["findings"]] == [
        ("EDRBDDUALPRIMARY", "vm1", "hostA")]
    assert "salt-run pairvm.migrate vm1 cleanup=True" in ret["lines"][0]


def test_a_stopped_vm_may_run_nowhere(pair):
    pair.pillar["vms"]["vm2"]["state"] = "stopped"
    pair.facts["hostB"]["running"].remove("vm2")
    assert runner.verify()["findings"] == []


def test_pair_checks_wait_for_both_hosts(pair):
    pair.answers["hostA"] = NO_ANSWER
    pair.facts["hostB"]["running"].remove("vm2")  # would be EVMNOTRUNNING, but hostA may run it
    assert codes(runner.verify()) == [("ERROR", "EHOSTDOWN", None, "hostA")]


# --- output --------------------------------------------------------------------------------------------


def test_errors_come_first_then_warnings_each_sorted(pair):
    pair.facts["hostA"]["lvs"]["here/zzz"] = 16
    pair.facts["hostB"]["tools_missing"] = ["pv"]
    pair.facts["hostA"]["vnc"]["vm1"] = "0.0.0.0"
    result = runner.verify()
    assert [line.split(":")[0] for line in result["lines"]] == [
        "ERROR ETOOLMISSING @hostB", "ERROR EVNCNOTLOCAL vm1@hostA", "WARNING EVMUNKNOWN zzz@hostA"]
    assert result["summary"] == "2 errors, 1 warning"
    for finding in result["findings"]:
        assert set(finding) == {"severity", "code", "vm", "host", "message"}


def test_an_invalid_pillar_is_an_error_not_a_crash(pair):
    pair.pillar["vms"]["vm1"]["memory"] = -1
    result = runner.verify()
    assert result["retcode"] == 1 and "vm 'vm1': memory" in result["error"]
    assert pair.calls == []


def test_every_code_is_documented():
    doc = Path(REPO, "docs", "verify.md").read_text()
    for code in verify.CODES:
        assert f"`{code}`" in doc
        assert f"``{code}``" in runner.verify.__doc__
    documented = set(re.findall(r"^\| `(E[A-Z]+)` \|", doc, re.M))
    assert documented == set(verify.CODES)
