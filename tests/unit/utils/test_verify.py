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
PING_ONLY = object()  # answers test.ping, then nothing




def drbd(**changes):
    """A resource as drbd.status reports it. ``split_brain`` only when given: StandAlone is
    also what a plain ``drbdadm disconnect`` leaves (the kernel tier showed it)."""
    state = {**UP, **changes}
    state["standalone"] = state["connection"] == "StandAlone"
    state["connected"] = state["connection"] == "Connected"
    state["up_to_date"] = state["disk"] == "UpToDate" and state["peer_disk"] == "UpToDate"
    return state


class Pair:
    """The master (pillars, registries on disk) and what each host's pairvm.facts answers.
    ``add_two()`` adds the pair "two" (hostC, hostD)."""

    def __init__(self, tmp_path, monkeypatch, loader_mock):
        self.pillars = {"default": copy.deepcopy(PILLAR)}
        self.cachedir = tmp_path / "cache"
        opts = {"cachedir": str(self.cachedir), "conf_file": str(tmp_path / "master")}
        self.opts = opts
        loader_mock(runner, salt={}, opts=opts)
        monkeypatch.setattr(runner, "_pillar", self.pillar_of)
        monkeypatch.setattr(master.salt.client, "get_local_client", lambda conf_file=None, **kw: self)
        self.calls, self.registries, self.facts = [], {}, {}
        self.answers = {}  # host: NO_ANSWER, PING_ONLY or (retcode, ret) to override the facts
        self.add("default")

    @property
    def pillar(self):
        return self.pillars["default"]

    @property
    def registry(self):
        return self.registries["default"]

    @property
    def registry_path(self):
        return self.path("default")

    def path(self, pair):
        return self.cachedir / "pairvm" / "pairs" / pair / "registry.json"

    def pillar_of(self, minion):
        return copy.deepcopy(next(p for p in self.pillars.values() if minion in p["pair"]))

    def add(self, name, pillar=None):
        if pillar is not None:
            self.pillars[name] = pillar
        settings, definitions = schema.settings(self.pillars[name]), schema.vms(self.pillars[name])
        others = {other: saved for other, saved in self.registries.items() if other != name}
        self.registries[name] = alloc.allocate_pair(settings, definitions, {"vms": {}}, others)
        self.save_registry(name)
        for host in settings["pair"]:
            self.facts[host] = self.host_facts(host, settings, definitions, self.registries[name])

    def add_two(self):
        two = copy.deepcopy(PILLAR)
        two.update(pair_name="two", vms={"db1": {"home": "hostC", "memory": 256, "disc": "1G"}},
                   pair={"hostC": {"admin_ip": "10.77.0.13", "replication_ip": "10.78.0.13"},
                         "hostD": {"admin_ip": "10.77.0.14", "replication_ip": "10.78.0.14"}})
        two["pool"] = dict(two["pool"], network="dc2")
        self.add("two", two)

    def host_facts(self, host, settings, definitions, saved):
        machines, lvs, vnc, running = {}, {}, {}, []
        for name, definition in definitions.items():
            record = schema.record(name, definition, saved["vms"][name]["alloc"], settings)
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
            "drbd_auth": {name: True for name in machines},
            "running": sorted(running + ["other-guest"]), "vnc": vnc, "lvs": lvs,
            "volume_groups": {"here": {"size": "1020.00m", "free": "0m"},
                              "there": {"size": "1020.00m", "free": "0m"}},
            "tools_missing": [], "bridges": {"br0": {"present": True, "state": "up"}}, "errors": {},
        }

    def save_registry(self, name="default"):
        self.path(name).parent.mkdir(parents=True, exist_ok=True)
        self.path(name).write_text(json.dumps(self.registries[name], indent=2, sort_keys=True))

    # the LocalClient ---------------------------------------------------------------------------

    def cmd(self, tgt, fun, arg=(), timeout=None, tgt_type="glob", kwarg=None, full_return=False, **kw):
        self.calls.append({"tgt": tgt, "fun": fun, "arg": list(arg), "tgt_type": tgt_type,
                           "kwarg": dict(kwarg or {}), "timeout": timeout, "full_return": full_return})
        ret = {}
        for host in tgt:
            answer = self.answers.get(host)
            if answer is NO_ANSWER or (answer is PING_ONLY and fun != "test.ping"):
                continue
            if fun == "test.ping":
                ret[host] = {"ret": True, "retcode": 0, "jid": "1"}
                continue
            retcode, value = answer if answer else (0, copy.deepcopy(self.facts[host]))
            ret[host] = {"ret": value, "retcode": retcode, "jid": "1"}
        return ret

    def facts_calls(self):
        return [c for c in self.calls if c["fun"] != "test.ping"]


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
                      "retcode": 0, "pairs": ["default"]}
    assert runner.__context__.get("retcode", 0) == 0


def test_verify_asks_both_hosts_once_in_one_call(pair):
    runner.verify(timeout=15)
    assert [c["fun"] for c in pair.calls] == ["test.ping", "pairvm.facts"]
    assert pair.facts_calls() == [{"tgt": ["hostA", "hostB"], "fun": "pairvm.facts", "arg": [],
                                   "tgt_type": "list", "kwarg": {"bridges": ["br0"]}, "timeout": 15,
                                   "full_return": True}]


def test_verify_asks_for_every_bridge_the_vms_use(pair):
    pair.pillar["vms"]["vm2"]["bridge"] = "br1"
    runner.verify()
    assert pair.facts_calls()[0]["kwarg"] == {"bridges": ["br0", "br1"]}


def test_verify_reads_the_registry_without_locking_or_writing_it(pair):
    before = (pair.registry_path.stat().st_ino, pair.registry_path.stat().st_mtime_ns,
              pair.registry_path.read_bytes())
    runner.verify()
    after = (pair.registry_path.stat().st_ino, pair.registry_path.stat().st_mtime_ns,
             pair.registry_path.read_bytes())
    assert after == before
    assert sorted(p.name for p in pair.registry_path.parent.iterdir()) == ["registry.json"]


def test_verify_without_a_registry_has_no_pair_to_check(pair):
    pair.registry_path.unlink()
    result = runner.verify()
    assert (result["ok"], result["pairs"], pair.calls) == (True, [], [])


# --- each fault gives its code -----------------------------------------------------------------------


def test_a_machines_file_edited_on_one_host(pair):
    pair.facts["hostB"]["machines"]["vm1"]["digest"] = render.machines_digest("memory: 9999\n")
    result = runner.verify()
    assert codes(result) == [("ERROR", "EMACHINESDIFF", "vm1", None)]
    assert runner.verify(name="vm1")["findings"] == result["findings"]  # one VM's findings only
    assert runner.verify(name="vm2", minion="hostB")["findings"] == []
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
                                               peer_disk="DUnknown", split_brain=True)
    result = runner.verify()
    assert codes(result) == [("ERROR", "EDRBDSPLITBRAIN", "vm1", "hostA"),
                             ("ERROR", "EDRBDSPLITBRAIN", "vm1", "hostB")]
    assert result["lines"][0].startswith(
        "ERROR EDRBDSPLITBRAIN vm1@hostA: DRBD resource vm1 is StandAlone with its disc UpToDate: "
        "split brain")
    assert_fails(result)


def test_a_plain_disconnect_is_standalone_but_no_split_brain(pair):
    pair.facts["hostA"]["drbd"]["vm1"] = drbd(role="Primary", connection="StandAlone", peer_role=None,
                                              replication="Off", peer_disk="DUnknown")
    pair.facts["hostB"]["drbd"]["vm1"] = drbd(connection="WFConnection", peer_role=None,
                                              replication="Off", peer_disk="DUnknown")
    result = runner.verify()
    assert codes(result) == [("ERROR", "EDRBDDISCONNECTED", "vm1", "hostA"),
                             ("ERROR", "EDRBDDISCONNECTED", "vm1", "hostB")]
    assert "vm1 is StandAlone, not Connected" in result["lines"][0]


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


def grow(pair, name, mib, hosts=HOSTS):
    """VM ``name``'s LVs grown to ``mib`` MiB on ``hosts`` (as pairvm.resize leaves them)."""
    for host in hosts:
        vg = pair.facts[host]["machines"][name]["vg"]
        pair.facts[host]["lvs"][f"{vg}/{name}"] = mib


def test_a_disc_grown_and_recorded_by_the_runner_is_a_warning_until_pillar_says_it(pair):
    grow(pair, "vm1", 2048)
    pair.registry["vms"]["vm1"]["disc_mib"] = 2048  # salt-run pairvm.resize vm1 2G
    pair.save_registry()
    result = runner.verify()
    assert codes(result) == [("WARNING", "EDISCGROWN", "vm1", None)]
    assert result["lines"] == [
        "WARNING EDISCGROWN vm1: its definition gives a 1024 MiB disc, but its LVs are 2048 MiB on hostA, "
        "2048 MiB on hostB: grown by salt-run pairvm.resize, whose size the registry keeps; set disc: 2048M "
        "in pillar, which describes a disc that no longer exists"]
    assert result["ok"] is True and result["retcode"] == 0
    pair.pillar["vms"]["vm1"]["disc"] = "2G"
    assert runner.verify()["findings"] == []


@pytest.mark.parametrize("recorded", [None, 1536])
def test_a_disc_grown_that_nothing_records_is_an_error(pair, recorded):
    grow(pair, "vm2", 3072, hosts=("hostB",))  # pairvm.resize on vm2's home alone, or lvextend
    if recorded:
        pair.registry["vms"]["vm2"]["disc_mib"] = recorded  # an older, smaller resize
        pair.save_registry()
    result = runner.verify()
    assert codes(result) == [("ERROR", "EDISCGROWN", "vm2", None)]
    assert "LVs are 3072 MiB on hostB and nothing records that size" in result["lines"][0]
    assert result["lines"][0].endswith("record it: salt-run pairvm.resize vm2 3072M")
    assert_fails(result)


def test_a_cli_created_vm_grown_without_the_runner_is_an_error(pair):
    pair.registry["vms"]["vm2"]["definition"] = schema.vm_definition("vm2", pair.pillar["vms"].pop("vm2"),
                                                                     schema.settings(pair.pillar))
    pair.save_registry()
    pair.pillar["vms"]["vm2"] = pair.registry["vms"]["vm2"]["definition"]  # the ext_pillar serves it
    assert runner.verify()["findings"] == []
    grow(pair, "vm2", 3072)
    assert codes(runner.verify()) == [("ERROR", "EDISCGROWN", "vm2", None)]


def test_an_lv_rounded_up_to_the_extent_size_is_not_grown(pair):
    pair.pillar["vms"]["vm1"]["disc"] = "1022M"  # lvcreate -L 1022M gives 1024 MiB with 4 MiB extents
    for host in HOSTS:
        for vg in ("here", "there"):
            pair.facts[host]["volume_groups"][vg]["extent_mib"] = 4
    assert runner.verify()["findings"] == []
    for host in HOSTS:
        pair.facts[host]["volume_groups"]["here"]["extent_mib"] = 1
    assert codes(runner.verify()) == [("ERROR", "EDISCGROWN", "vm1", None)]


def test_memory_over_the_cap(pair):
    pair.pillar["memory_cap"] = 512
    result = runner.verify()
    assert codes(result) == [("ERROR", "EMEMCAP", None, None)]
    assert result["lines"] == ["ERROR EMEMCAP pair default: the pair's 2 VMs total 768 MiB of memory, over "
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
    assert result["lines"] == ["ERROR EALLOCCOLLISION pair default: ip '10.79.0.5' is allocated to more "
                               "than one VM: 'vm1', 'vm2'"]
    assert_fails(result)


def test_an_unreadable_registry_is_reported(pair):
    pair.registry_path.write_text("{not json")
    result = runner.verify()
    assert codes(result) == [("ERROR", "EQUERYFAILED", None, None)]
    assert "cannot read the registry" in result["findings"][0]["message"]
    assert result["lines"][0].startswith("ERROR EQUERYFAILED pair default: cannot read the registry")


def test_a_host_that_does_not_answer_is_not_asked_for_facts(pair):
    pair.answers["hostB"] = NO_ANSWER
    result = runner.verify(timeout=7)
    assert codes(result) == [("ERROR", "EHOSTDOWN", None, "hostB")]
    assert result["lines"][0].startswith("ERROR EHOSTDOWN @hostB: did not answer within 8 s: is the host up")
    assert pair.facts_calls()[0]["tgt"] == ["hostA"]
    assert_fails(result)


def test_a_host_that_answers_the_ping_but_not_facts(pair):
    pair.answers["hostB"] = PING_ONLY
    result = runner.verify(timeout=7)
    assert codes(result) == [("ERROR", "EHOSTDOWN", None, "hostB")]
    assert result["lines"][0].startswith("ERROR EHOSTDOWN @hostB: did not answer within 7 s")


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
        assert set(finding) == {"severity", "code", "vm", "host", "message", "pair"}
        assert finding["pair"] == "default"
    assert result["pairs"] == ["default"]


def test_an_invalid_pillar_is_a_finding_not_a_crash(pair):
    pair.pillar["vms"]["vm1"]["memory"] = -1
    result = runner.verify()
    assert codes(result) == [("ERROR", "EQUERYFAILED", None, None)]
    assert result["lines"][0].startswith("ERROR EQUERYFAILED pair default: vm 'vm1': memory")


# --- peer authentication, several pairs -------------------------------------------------------------


def test_a_resource_without_peer_authentication(pair):
    pair.facts["hostB"]["drbd_auth"]["vm2"] = False
    result = runner.verify()
    assert codes(result) == [("ERROR", "EDRBDNOAUTH", "vm2", "hostB")]
    assert result["lines"][0].startswith("ERROR EDRBDNOAUTH vm2@hostB: DRBD resource vm2 is configured to "
                                         "connect without peer authentication")
    assert_fails(result)


def test_two_pairs_are_verified_in_one_publish_each_against_its_own_pillar(pair):
    pair.add_two()
    result = runner.verify()
    assert (result["ok"], result["pairs"]) == (True, ["default", "two"]), result["lines"]
    assert [c["tgt"] for c in pair.calls] == [["hostA", "hostB", "hostC", "hostD"]] * 2
    del pair.facts["hostD"]["machines"]["db1"]
    pair.answers["hostA"] = NO_ANSWER
    result = runner.verify()
    assert {(f["pair"], f["code"], f["vm"], f["host"]) for f in result["findings"]} == {
        ("default", "EHOSTDOWN", None, "hostA"), ("two", "EVMMISSING", "db1", "hostD")}
    only_two = runner.verify(pair="two")
    assert only_two["pairs"] == ["two"] and codes(only_two) == [("ERROR", "EVMMISSING", "db1", "hostD")]
    assert pair.calls[-1]["tgt"] == ["hostC", "hostD"]


def test_a_mac_given_in_two_pairs_is_a_collision(pair):
    pair.add_two()
    pair.registries["two"]["vms"]["db1"]["alloc"]["mac"] = pair.registry["vms"]["vm1"]["alloc"]["mac"]
    pair.save_registry("two")
    result = runner.verify()
    assert codes(result) == [("ERROR", "EALLOCCOLLISION", None, None)]
    assert result["lines"] == ["ERROR EALLOCCOLLISION pair: mac '52:54:00:00:00:01' is in pair 'default' "
                               "and pair 'two'"]
    assert codes(runner.verify(pair="two")) == codes(result)


def test_overlapping_pools_of_two_pairs_on_one_network_are_a_collision(pair):
    pair.add_two()
    pair.registries["two"]["pair"]["pool"]["network"] = "default"
    pair.save_registry("two")
    assert "overlaps pair 'two''s pool 10.79.0.0/24 on the same public network 'default'" in \
        runner.verify()["lines"][0]


def test_every_code_is_documented():
    doc = Path(REPO, "docs", "verify.md").read_text()
    for code in verify.CODES:
        assert f"`{code}`" in doc
        assert f"``{code}``" in runner.verify.__doc__
    documented = set(re.findall(r"^\| `(E[A-Z]+)` \|", doc, re.M))
    assert documented == set(verify.CODES)


def swapped(pair, name, home, peer):
    """VM ``name`` after salt-run pairvm.swap made ``home`` its home, running there."""
    for host in HOSTS:
        machine = pair.facts[host]["machines"][name]
        old, new = machine["vg"], "here" if host == home else "there"
        machine.update(home=home, peer=peer, vg=new)
        pair.facts[host]["lvs"][f"{new}/{name}"] = pair.facts[host]["lvs"].pop(f"{old}/{name}")
    pair.facts[peer]["running"].remove(name)
    pair.facts[home]["running"].append(name)
    pair.facts[home]["vnc"][name] = pair.facts[peer]["vnc"].pop(name)
    pair.facts[home]["drbd"][name], pair.facts[peer]["drbd"][name] = \
        pair.facts[peer]["drbd"][name], pair.facts[home]["drbd"][name]


def test_a_home_moved_by_swap_is_a_warning_naming_the_pillar_entry_until_pillar_says_it(pair):
    swapped(pair, "vm1", "hostB", "hostA")
    pair.registry["vms"]["vm1"]["home"] = "hostB"
    pair.save_registry()
    result = runner.verify()
    assert codes(result) == [("WARNING", "EHOMEMOVED", "vm1", None)]  # not EVMAWAY: hostB is its home
    assert result["lines"] == [
        "WARNING EHOMEMOVED vm1: its home is hostB since salt-run pairvm.swap (the registry keeps it), but "
        "its pillar entry pairvm:vms:vm1:home gives hostA: set home: hostB there"]
    assert result["ok"] is True
    pair.pillar["vms"]["vm1"]["home"] = "hostB"
    assert runner.verify()["findings"] == []


def test_a_swap_begun_and_not_finished_is_a_warning(pair):
    pair.registry["vms"]["vm2"]["swap"] = {"to": "hostA"}
    pair.save_registry()
    result = runner.verify()
    assert codes(result) == [("WARNING", "ESWAPUNFINISHED", "vm2", None)]
    assert result["lines"][0].endswith("run salt-run pairvm.swap vm2")
