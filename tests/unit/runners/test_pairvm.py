"""_runners/pairvm.py with the master mocked: the minions answer through a fake LocalClient.

The registry is a real file under a temporary cachedir; the pillar the runner compiles is the
pillar below merged with the real ``pairvm_registry`` ext_pillar, as the master would serve it.
"""

import copy
import json
import os
import re

import pytest

from pairvmlib import master as master_lib
from pairvmlib import schema
from tests.unit.conftest import FakeClock, load, pair_pillar

runner = load("_runners/pairvm.py", "pairvm_runner")
registry_pillar = load("_pillar/pairvm_registry.py", "pairvm_registry_pillar_for_runner")

PILLAR = pair_pillar()
NO_ANSWER = object()




class MinionFailed(Exception):
    """A handler raising this makes the minion answer with an error and retcode 1."""




def row(name, running=False, memory=256, **fields):
    """One row of pairvm.list on a host."""
    return {"name": name, "memory": memory, "disc": 1024, "running": running, "location": "home",
            "vnc_display": 1, "drbd_connection": "Connected", "drbd_disk": "UpToDate",
            "mac": "52:54:00:00:00:01", "ip": "10.79.0.5", **fields}


class Master:
    """The master's side: registry on disk, compiled pillar, and two minions behind a LocalClient."""

    def __init__(self, tmp_path, monkeypatch, loader_mock):
        self.pillar = copy.deepcopy(PILLAR)
        self.cachedir = tmp_path / "cache"
        self.registry = self.cachedir / "pairvm" / "registry.json"
        opts = {"cachedir": str(self.cachedir), "conf_file": str(tmp_path / "master")}
        loader_mock(runner, salt={}, opts=opts)
        registry_pillar.__opts__ = opts
        monkeypatch.setattr(runner, "_pillar", self.compiled_pillar)
        monkeypatch.setattr(master_lib.salt.client, "get_local_client", self.get_local_client)
        self.clock = FakeClock()
        monkeypatch.setattr(runner, "time", self.clock)
        self.calls, self.clients, self.seen_at_refresh = [], 0, {}
        self.lists = {"hostA": {"vms": [], "memory": {}}, "hostB": {"vms": [], "memory": {}}}
        self.connect_after = 1  # drbd.status polls that answer Connecting before Connected
        self.handlers = {
            "saltutil.refresh_pillar": self._refresh,
            "pairvm.create": lambda minion, name: {"name": name, "changes": [f"lvcreate on {minion}"],
                                                   "comment": ""},
            "pairvm.destroy": lambda minion, name, **kw: {"name": name, "changes": ["lvremove"],
                                                          "comment": ""},
            "pairvm.list": lambda minion: self.lists[minion],
            "drbd.status": self._drbd_status,
        }

    def compiled_pillar(self, minion=None):
        """Pillar ``pairvm`` as the master compiles it: the SLS pillar, then the registry ext_pillar."""
        pairvm = copy.deepcopy(self.pillar)
        ext = registry_pillar.ext_pillar(minion or "hostA", {"pairvm": pairvm})
        if ext:
            pairvm["vms"] = {**pairvm.get("vms", {}), **ext["pairvm"]["vms"]}
            pairvm["allocations"] = ext["pairvm"]["allocations"]
        return pairvm

    def get_local_client(self, conf_file=None, **kwargs):
        self.clients += 1
        return self

    def cmd(self, tgt, fun, arg=(), timeout=None, kwarg=None, full_return=False, **kwargs):
        assert full_return is True
        self.calls.append((tgt, fun, list(arg), dict(kwarg or {})))
        try:
            ret = self.handlers[fun](tgt, *arg, **(kwarg or {}))
        except MinionFailed as exc:
            return {tgt: {"ret": f"ERROR: {exc}", "retcode": 1, "jid": "1"}}
        if ret is NO_ANSWER:
            return {}
        return {tgt: {"ret": ret, "retcode": 0, "jid": "1"}}

    def _refresh(self, minion, wait=False):
        self.seen_at_refresh[minion] = self.compiled_pillar(minion)
        return True

    def _drbd_status(self, minion, name):
        polls = sum(1 for c in self.calls if c[:2] == (minion, "drbd.status"))
        connected = self.connect_after is not None and polls > self.connect_after
        return {"connection": "Connected" if connected else "Connecting",
                "disk": "UpToDate", "role": "Secondary"}

    # --- test helpers ---------------------------------------------------------------------

    def functions(self):
        return [(tgt, fun) for tgt, fun, _, _ in self.calls]

    def registry_file(self):
        """(inode, bytes) of the registry: a rewrite, even with the same text, changes the inode."""
        return os.stat(self.registry).st_ino, self.registry.read_bytes()

    def load_registry(self):
        return json.loads(self.registry.read_text())


@pytest.fixture
def master(tmp_path, monkeypatch, loader_mock):
    return Master(tmp_path, monkeypatch, loader_mock)


@pytest.fixture
def allocated(master):
    """The pillar's VMs allocated (vm1 10.79.0.5, vm2 10.79.0.6), as the orchestrate does first."""
    runner.allocate()
    master.calls.clear()
    return master


# --- allocate -------------------------------------------------------------------------------------


def test_allocate_gives_each_vm_its_values_and_is_idempotent(master):
    first = runner.allocate()
    assert first["vm1"] == {"ip": "10.79.0.5", "mac": "52:54:00:00:00:01", "drbd_port": 7800,
                            "drbd_minor": 0, "vnc_display": 1}
    assert first["vm2"]["ip"] == "10.79.0.6" and first["vm2"]["drbd_minor"] == 1
    saved = master.registry_file()
    assert runner.allocate() == first
    assert master.registry_file() == saved
    assert master.load_registry()["vms"]["vm1"] == {"definition": None, "alloc": first["vm1"]}
    assert master.calls == [] and master.clients == 0


def test_allocate_saves_nothing_when_pillar_is_invalid(allocated):
    saved = allocated.registry_file()
    allocated.pillar["vms"]["vm3"] = {"home": "hostA", "memory": 256, "disc": "1G", "ip": "10.79.0.5"}
    ret = runner.allocate()
    assert ret["retcode"] == 1
    assert "vm 'vm3': ip: '10.79.0.5' is already allocated to vm 'vm1'" in ret["error"]
    assert allocated.registry_file() == saved
    assert runner.__context__["retcode"] == 1


# --- create: refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize("args, options, message", [
    (("bad;name", "hostA", 512, "2G"), {}, r"name: must be 1 to 12 characters.*contains ';'"),
    (("../x", "hostA", 512, "2G"), {}, "name: must be"),
    (("abcdefghijklm", "hostA", 512, "2G"), {}, r"it has 13"),
    (("all", "hostA", 512, "2G"), {}, "reserved by drbdadm"),
    (("web", "hostC", 512, "2G"), {}, r"vm 'web': home: must be one of hostA, hostB, got 'hostC'"),
    (("web", "hostA", 0, "2G"), {}, r"vm 'web': memory: must be a whole number of MiB > 0"),
    (("web", "hostA", "lots", "2G"), {}, r"vm 'web': memory"),
    (("web", "hostA", 512, "2X"), {}, r"vm 'web': disc: must be a whole number of MiB or a size"),
    (("web", "hostA", 512, "8M"), {}, r"vm 'web': disc: must be at least 16 MiB"),
    (("web", "hostA", 512, "2G"), {"ip": "192.0.2.5"}, r"vm 'web': ip: '192.0.2.5' is outside the pool"),
    (("web", "hostA", 512, "2G"), {"ip": "10.79.0.1"}, r"vm 'web': ip: '10.79.0.1' is the gateway"),
    (("web", "hostA", 512, "2G"), {"ip": "10.79.0.5"},
     r"vm 'web': ip: '10.79.0.5' is already allocated to vm 'vm1'"),
    (("web", "hostA", 512, "2G"), {"drbd_port": 7800}, r"drbd_port: 7800 is already allocated to vm 'vm1'"),
    (("web", "hostA", 1500, "2G"), {}, r"memory_cap: .* 2268 MiB, over the cap of 2048 MiB.*vm 'web'"),
    (("vm1", "hostA", 512, "2G"), {}, "VM vm1 already exists"),
    (("web", "hostA", 512, "2G"), {"colour": "red"}, r"unknown key\(s\) colour"),
])
def test_create_refuses_bad_input_before_touching_anything(allocated, args, options, message):
    saved = allocated.registry_file()
    ret = runner.create(*args, **options)
    assert set(ret) == {"error", "retcode"} and ret["retcode"] == 1
    assert re.search(message, ret["error"]), ret["error"]
    assert allocated.calls == [] and allocated.clients == 0
    assert allocated.registry_file() == saved
    assert runner.__context__["retcode"] == 1


# --- create: success -----------------------------------------------------------------------------


def test_create_registers_then_creates_on_the_peer_then_the_home_and_waits_for_drbd(allocated):
    ret = runner.create("web", "hostA", 512, "2G", vcpus=2, __pub_user="root")
    entry = allocated.load_registry()["vms"]["web"]
    assert entry["alloc"] == {"ip": "10.79.0.7", "mac": "52:54:00:00:00:03", "drbd_port": 7802,
                              "drbd_minor": 2, "vnc_display": 3}
    definition = entry["definition"]
    assert (definition["home"], definition["memory"], definition["disc_mib"], definition["vcpus"],
            definition["state"]) == ("hostA", 512, 2048, 2, "running")
    assert "__pub_user" not in definition
    order = allocated.functions()
    refreshes = [i for i, call in enumerate(order) if call[1] == "saltutil.refresh_pillar"]
    assert sorted(order[i][0] for i in refreshes) == ["hostA", "hostB"]
    creates = [call for call in order if call[1] == "pairvm.create"]
    assert creates == [("hostB", "pairvm.create"), ("hostA", "pairvm.create")]
    first_create = order.index(("hostB", "pairvm.create"))
    assert max(refreshes) < first_create
    polls = [i for i, call in enumerate(order) if call == ("hostA", "drbd.status")]
    assert len(polls) == 2 and min(polls) > order.index(("hostA", "pairvm.create"))
    assert all(c[2] == ["web"] for c in allocated.calls if c[1] in ("pairvm.create", "drbd.status"))
    assert all(c[3] == {"wait": True} for c in allocated.calls if c[1] == "saltutil.refresh_pillar")
    assert not [c for c in order if c[1] == "pairvm.destroy"]
    assert ret["name"] == "web" and ret["home"] == "hostA" and ret["drbd"]["connection"] == "Connected"
    assert set(ret["changes"]) == {"hostA", "hostB"}
    assert (ret["ip"], ret["mac"], ret["vnc_display"]) == ("10.79.0.7", "52:54:00:00:00:03", 3)
    # what the hosts saw when they refreshed: the VM, with its allocation, valid for pillar_record
    for minion in ("hostA", "hostB"):
        seen = allocated.seen_at_refresh[minion]
        record = schema.record("web", schema.vms(seen)["web"], seen["allocations"]["web"],
                               schema.settings(seen))
        assert record["hosts"]["hostA"]["vg"] == "here" and record["ip"] == "10.79.0.7"
        assert seen["allocations"]["vm1"]["ip"] == "10.79.0.5"


def test_create_without_wait_asks_drbd_once(allocated):
    allocated.connect_after = None
    ret = runner.create("web", "hostB", 256, "1G", wait=False)
    assert ret["drbd"]["connection"] == "Connecting"
    assert [c for c in allocated.functions() if c[1] == "drbd.status"] == [("hostB", "drbd.status")]
    assert [c for c in allocated.functions() if c[1] == "pairvm.create"] == [
        ("hostA", "pairvm.create"), ("hostB", "pairvm.create")]


# --- create: failures are undone -------------------------------------------------------------------


def fail_on(master, function, minion, message):
    normal = master.handlers[function]

    def handler(tgt, *args, **kwargs):
        if tgt == minion:
            if message is NO_ANSWER:
                return NO_ANSWER
            raise MinionFailed(message)
        return normal(tgt, *args, **kwargs)

    master.handlers[function] = handler


def assert_undone(master, ret):
    assert ret["retcode"] == 1
    destroys = [c for c in master.calls if c[1] == "pairvm.destroy"]
    assert sorted(c[0] for c in destroys) == ["hostA", "hostB"]
    assert all(c[2] == ["web"] and c[3] == {"confirm": True, "force": True} for c in destroys)
    registry = master.load_registry()["vms"]
    assert "web" not in registry
    assert registry["vm1"]["alloc"]["ip"] == "10.79.0.5" and registry["vm2"]["alloc"]["ip"] == "10.79.0.6"


def test_create_failing_on_the_home_host_is_undone_on_both(allocated):
    fail_on(allocated, "pairvm.create", "hostA", "drbdadm up web failed with exit code 10")
    ret = runner.create("web", "hostA", 512, "2G")
    assert "hostA: pairvm.create failed" in ret["error"] and "drbdadm up web" in ret["error"]
    assert_undone(allocated, ret)
    assert runner.__context__["retcode"] == 1


def test_create_failing_on_the_peer_never_reaches_the_home_host(allocated):
    fail_on(allocated, "pairvm.create", "hostB", "lvcreate there/web failed: insufficient free space")
    ret = runner.create("web", "hostA", 512, "2G")
    assert "hostB: pairvm.create failed" in ret["error"]
    assert ("hostA", "pairvm.create") not in allocated.functions()
    assert_undone(allocated, ret)


def test_create_with_a_silent_minion_is_undone(allocated):
    fail_on(allocated, "saltutil.refresh_pillar", "hostB", NO_ANSWER)
    ret = runner.create("web", "hostA", 512, "2G")
    assert "hostB did not answer saltutil.refresh_pillar" in ret["error"]
    assert not [c for c in allocated.functions() if c[1] == "pairvm.create"]
    assert_undone(allocated, ret)


def test_create_whose_drbd_never_connects_is_undone(allocated):
    allocated.connect_after = None
    ret = runner.create("web", "hostA", 512, "2G")
    assert "DRBD resource web did not connect within 60s on hostA" in ret["error"]
    assert 60 <= allocated.clock.now - 1000.0 <= 62
    assert_undone(allocated, ret)


def test_an_undone_create_frees_its_values_for_the_next(allocated):
    fail_on(allocated, "pairvm.create", "hostA", "boom")
    runner.create("web", "hostA", 512, "2G")
    allocated.handlers["pairvm.create"] = lambda minion, name: {"name": name, "changes": [], "comment": ""}
    runner.create("db", "hostA", 512, "2G")
    assert allocated.load_registry()["vms"]["db"]["alloc"]["ip"] == "10.79.0.7"


# --- destroy -------------------------------------------------------------------------------------------


@pytest.fixture
def web(allocated):
    """A CLI-created VM web (10.79.0.7) on top of the allocated pillar VMs."""
    runner.create("web", "hostA", 512, "2G")
    allocated.calls.clear()
    return allocated


@pytest.mark.parametrize("confirm", [False, "yes", 1])
def test_destroy_needs_confirm_true(web, confirm):
    saved = web.registry_file()
    ret = runner.destroy("web", confirm=confirm)
    assert ret["retcode"] == 1 and "deletes its disc on both hosts: pass confirm=True" in ret["error"]
    assert web.calls == [] and web.registry_file() == saved


def test_destroy_refuses_a_bad_name_before_anything(web):
    ret = runner.destroy("../web", confirm=True, force=True)
    assert ret["retcode"] == 1 and "name: must be" in ret["error"]
    assert web.calls == []


def test_destroy_refuses_a_running_vm_without_force(web):
    web.lists["hostB"]["vms"] = [row("web", running=True)]
    saved = web.registry_file()
    ret = runner.destroy("web", confirm=True)
    assert ret["retcode"] == 1 and "VM web is running on hostB: stop it first, or force=True" in ret["error"]
    assert not [c for c in web.functions() if c[1] == "pairvm.destroy"]
    assert web.registry_file() == saved


def test_destroy_with_force_destroys_on_both_then_releases(web):
    web.lists["hostA"]["vms"] = [row("web", running=True)]
    ret = runner.destroy("web", confirm=True, force=True)
    destroys = [c for c in web.calls if c[1] == "pairvm.destroy"]
    assert [(c[0], c[2], c[3]) for c in destroys] == [
        ("hostA", ["web"], {"confirm": True, "force": True}),
        ("hostB", ["web"], {"confirm": True, "force": True}),
    ]
    assert set(ret["changes"]) == {"hostA", "hostB"}
    assert "web" not in web.load_registry()["vms"]
    refreshes = [i for i, c in enumerate(web.functions()) if c[1] == "saltutil.refresh_pillar"]
    last_destroy = max(i for i, c in enumerate(web.functions()) if c[1] == "pairvm.destroy")
    assert len(refreshes) == 2 and min(refreshes) > last_destroy
    assert {c[0] for c in web.calls if c[1] == "saltutil.refresh_pillar"} == {"hostA", "hostB"}


def test_destroy_releases_the_values_for_a_new_vm(web):
    assert runner.destroy("web", confirm=True)["name"] == "web"
    web.pillar["vms"]["db"] = {"home": "hostB", "memory": 256, "disc": "1G"}
    allocation = runner.allocate()
    assert allocation["db"] == {"ip": "10.79.0.7", "mac": "52:54:00:00:00:03", "drbd_port": 7802,
                                "drbd_minor": 2, "vnc_display": 3}
    assert "web" not in allocation


def test_destroy_failing_on_a_host_keeps_the_registry_entry(web):
    fail_on(web, "pairvm.destroy", "hostB", "lvremove there/web failed")
    ret = runner.destroy("web", confirm=True)
    assert ret["retcode"] == 1 and "hostB: pairvm.destroy failed" in ret["error"]
    assert "web" in web.load_registry()["vms"]


# --- resize ------------------------------------------------------------------------------------------


def test_resize_grows_the_peer_before_the_home_host(allocated):
    allocated.handlers["pairvm.pillar_record"] = lambda minion, name: {"name": name, "home": "hostA",
                                                                       "peer": "hostB"}
    allocated.handlers["pairvm.resize"] = lambda minion, name, size: {"name": name, "changes": [size]}
    ret = runner.resize("vm1", "2G")
    assert [c for c in allocated.functions() if c[1] == "pairvm.resize"] == [
        ("hostB", "pairvm.resize"), ("hostA", "pairvm.resize")]
    assert ret == {"hostB": {"name": "vm1", "changes": ["2G"]}, "hostA": {"name": "vm1", "changes": ["2G"]}}


def test_resize_refused_on_the_peer_stops_there(allocated):
    allocated.handlers["pairvm.pillar_record"] = lambda minion, name: {"name": name, "home": "hostA",
                                                                       "peer": "hostB"}

    def refuse(minion, name, size):
        raise MinionFailed(f"VM {name}'s disc is 1024 MiB; pairvm only grows discs")

    allocated.handlers["pairvm.resize"] = refuse
    ret = runner.resize("vm1", "512M")
    assert ret["retcode"] == 1 and "only grows" in ret["error"]
    assert [c for c in allocated.functions() if c[1] == "pairvm.resize"] == [("hostB", "pairvm.resize")]


# --- split brain ---------------------------------------------------------------------------------------


@pytest.fixture
def split(allocated):
    """hostB will be the victim; hostA is StandAlone with the split brain too."""
    allocated.handlers["pairvm.split_brain_victim"] = lambda minion, name, **kw: {
        "name": name, "changes": [f"lvcreate -s on {minion}", "drbdadm connect --discard-my-data"],
        "comment": "", "kwargs": kw}
    allocated.handlers["drbd.status"] = lambda minion, name: {"connection": "StandAlone",
                                                              "split_brain": True}
    allocated.handlers["drbd.connect"] = lambda minion, name: True
    return allocated


def test_split_brain_victim_discards_on_the_victim_then_connects_the_survivor(split):
    ret = runner.split_brain_victim("vm1", "hostB", snapshot_size="2G")
    assert split.functions() == [("hostB", "pairvm.split_brain_victim"), ("hostA", "drbd.status"),
                                 ("hostA", "drbd.connect")]
    assert ret["hostB"]["kwargs"] == {"snapshot": True, "test": False, "snapshot_size": "2G"}
    assert ret["hostA"]["changes"] == ["drbdadm connect vm1"]


def test_split_brain_victim_test_true_changes_nothing_on_the_survivor(split):
    ret = runner.split_brain_victim("vm1", "hostB", test=True)
    assert ("hostA", "drbd.connect") not in split.functions()
    assert ret["hostB"]["kwargs"]["test"] is True and "would connect" in ret["hostA"]["comment"]


def test_split_brain_victim_leaves_a_connecting_survivor_alone(split):
    split.handlers["drbd.status"] = lambda minion, name: {"connection": "Connecting"}
    ret = runner.split_brain_victim("vm1", "hostB", snapshot=False)
    assert ("hostA", "drbd.connect") not in split.functions()
    assert ret["hostB"]["kwargs"] == {"snapshot": False, "test": False}
    assert ret["hostA"]["changes"] == []


@pytest.mark.parametrize("name, victim, message", [
    ("vm1", "hostC", "victim 'hostC' is not a host of the pair"),
    ("bad;name", "hostB", "bad;name"),
])
def test_split_brain_victim_refuses_bad_input_before_any_call(split, name, victim, message):
    ret = runner.split_brain_victim(name, victim)
    assert ret["retcode"] == 1 and message in ret["error"]
    assert split.functions() == []


def test_split_brain_victim_refused_on_the_victim_never_touches_the_survivor(split):
    def refuse(minion, name, **kw):
        raise MinionFailed(f"DRBD resource {name} on {minion} is Connected, not in split brain")

    split.handlers["pairvm.split_brain_victim"] = refuse
    ret = runner.split_brain_victim("vm1", "hostB")
    assert ret["retcode"] == 1 and "not in split brain" in ret["error"]
    assert split.functions() == [("hostB", "pairvm.split_brain_victim")]


# --- list ----------------------------------------------------------------------------------------------


def test_list_merges_both_hosts_and_flags_disagreements(master):
    master.lists["hostA"]["vms"] = [
        row("vm1", running=True),
        row("solo", ip="10.79.0.9"),
        row("vm3", memory=256),
        row("vm4", running=True),
    ]
    master.lists["hostB"]["vms"] = [
        row("vm1", location="away"),
        row("vm3", memory=512, drbd_connection="StandAlone"),
        row("vm4", running=True),
    ]
    ret = runner.list_()
    rows = {r["name"]: r for r in ret["vms"]}
    assert list(rows) == ["solo", "vm1", "vm3", "vm4"]
    assert rows["vm1"]["running_on"] == ["hostA"] and rows["vm1"]["disagreements"] == []
    assert rows["vm1"]["drbd"] == {"hostA": "Connected/UpToDate", "hostB": "Connected/UpToDate"}
    assert rows["solo"]["disagreements"] == ["unknown to hostB"] and rows["solo"]["ip"] == "10.79.0.9"
    assert rows["vm3"]["disagreements"] == ["memory differs: hostA=256, hostB=512"]
    assert rows["vm3"]["drbd"]["hostB"] == "StandAlone/UpToDate"
    assert rows["vm4"]["running_on"] == ["hostA", "hostB"]
    assert rows["vm4"]["disagreements"] == ["running on both hosts"]
    assert sorted(master.functions()) == [("hostA", "pairvm.list"), ("hostB", "pairvm.list")]


def test_list_reports_a_host_that_does_not_answer(master):
    fail_on(master, "pairvm.list", "hostB", NO_ANSWER)
    ret = runner.list_()
    assert ret["retcode"] == 1 and "hostB did not answer pairvm.list" in ret["error"]
