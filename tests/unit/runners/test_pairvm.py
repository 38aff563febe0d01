"""_runners/pairvm.py with the master mocked: the minions answer through a fake LocalClient.

The registries are real files under a temporary cachedir; the pillar the runner compiles for a
minion is its pair's pillar below merged with the real ``pairvm_registry`` ext_pillar, as the
master would serve it. ``master.two()`` adds a second pair (hostC, hostD).
"""

import copy
import json
import os
import re
import stat

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


def pair_two(network="dc2"):
    """A second pair: hostC and hostD, the same pool as the first on another public network."""
    return {
        "pair_name": "two",
        "pair": {"hostC": {"admin_ip": "10.77.0.13", "replication_ip": "10.78.0.13"},
                 "hostD": {"admin_ip": "10.77.0.14", "replication_ip": "10.78.0.14"}},
        "pool": {"cidr": "10.79.0.0/24", "gateway": "10.79.0.1", "network": network},
        "domain_type": "qemu",
        "vms": {"db1": {"home": "hostC", "memory": 256, "disc": "1G"}},
    }


class Master:
    """The master's side: registries on disk, compiled pillar, and minions behind a LocalClient."""

    def __init__(self, tmp_path, monkeypatch, loader_mock):
        self.pillars = {"default": copy.deepcopy(PILLAR)}
        self.cachedir = tmp_path / "cache"
        self.registry = self.registry_path("default")
        opts = {"cachedir": str(self.cachedir), "conf_file": str(tmp_path / "master")}
        loader_mock(runner, salt={}, opts=opts)
        registry_pillar.__opts__ = opts
        monkeypatch.setattr(master_lib.Master, "compile", lambda _, minion: self.compiled(minion))
        monkeypatch.setattr(master_lib.salt.client, "get_local_client", self.get_local_client)
        monkeypatch.setattr(master_lib.salt.key, "get_key", lambda opts: self)
        self.clock = FakeClock()
        monkeypatch.setattr(runner, "time", self.clock)
        self.calls, self.clients, self.seen_at_refresh, self.down = [], 0, {}, set()
        self.lists = {h: {"vms": [], "memory": {}} for h in ("hostA", "hostB", "hostC", "hostD")}
        self.connect_after = 1  # drbd.status polls that answer Connecting before Connected
        self.handlers = {
            "test.ping": lambda minion: True,
            "saltutil.refresh_pillar": self._refresh,
            "pairvm.create": lambda minion, name: {"name": name, "changes": [f"lvcreate on {minion}"],
                                                   "comment": ""},
            "pairvm.destroy": lambda minion, name, **kw: {"name": name, "changes": ["lvremove"],
                                                          "comment": ""},
            "pairvm.list": lambda minion: self.lists[minion],
            "drbd.status": self._drbd_status,
        }

    @property
    def pillar(self):
        return self.pillars["default"]

    def two(self, **kwargs):
        self.pillars["two"] = pair_two(**kwargs)
        return self.pillars["two"]

    def registry_path(self, pair):
        return self.cachedir / "pairvm" / "pairs" / pair / "registry.json"

    def compiled(self, minion):
        """The whole pillar the master compiles for ``minion``: its pair's SLS pillar (by minion
        id), then the registry ext_pillar merged into ``pairvm``."""
        own = [p for p in self.pillars.values() if minion in p["pair"]]
        if not own:
            return {}
        pairvm = copy.deepcopy(own[0])
        ext = registry_pillar.ext_pillar(minion, {"pairvm": copy.deepcopy(pairvm)})
        if ext:
            pairvm["vms"] = {**pairvm.get("vms", {}), **ext["pairvm"]["vms"]}
            pairvm["allocations"] = ext["pairvm"]["allocations"]
            pairvm["resized"] = ext["pairvm"]["resized"]
            pairvm["cdroms"] = ext["pairvm"]["cdroms"]
            pairvm.setdefault("drbd_options", {}).update(ext["pairvm"].get("drbd_options", {}))
        return {"pairvm": pairvm}

    def compiled_pillar(self, minion="hostA"):
        return self.compiled(minion)["pairvm"]

    # salt.key: the accepted minions
    def list_status(self, status):
        return {"minions": ["hostA", "hostB", "hostC", "hostD", "other"]}

    def get_local_client(self, conf_file=None, **kwargs):
        self.clients += 1
        return self

    def cmd(self, tgt, fun, arg=(), timeout=None, kwarg=None, full_return=False, tgt_type="glob", **kwargs):
        assert full_return is True
        self.calls.append((tgt, fun, list(arg), dict(kwarg or {})))
        if tgt_type == "list":
            ret = {}
            for minion in tgt:
                ret.update(self._answer(minion, fun, arg, kwarg))
            return ret
        return self._answer(tgt, fun, arg, kwarg)

    def _answer(self, minion, fun, arg, kwarg):
        if minion in self.down:
            return {}
        try:
            ret = self.handlers[fun](minion, *arg, **(kwarg or {}))
        except MinionFailed as exc:
            return {minion: {"ret": f"ERROR: {exc}", "retcode": 1, "jid": "1"}}
        if ret is NO_ANSWER:
            return {}
        return {minion: {"ret": ret, "retcode": 0, "jid": "1"}}

    def _refresh(self, minion, wait=False):
        self.seen_at_refresh[minion] = self.compiled_pillar(minion)
        return True

    def _drbd_status(self, minion, name):
        polls = sum(1 for c in self.calls if c[:2] == (minion, "drbd.status"))
        connected = self.connect_after is not None and polls > self.connect_after
        return {"connection": "Connected" if connected else "Connecting",
                "disk": "UpToDate", "role": "Secondary"}

    # --- test helpers ---------------------------------------------------------------------

    def functions(self, ping=False):
        """(target, function) of each call, the pings left out unless ``ping``."""
        return [(tgt, fun) for tgt, fun, _, _ in self.calls if ping or fun != "test.ping"]

    def registry_file(self, pair="default"):
        """(inode, bytes) of a registry: a rewrite, even with the same text, changes the inode."""
        path = self.registry_path(pair)
        return os.stat(path).st_ino, path.read_bytes()

    def load_registry(self, pair="default"):
        return json.loads(self.registry_path(pair).read_text())


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
    first = runner.allocate()["default"]
    assert first["vm1"] == {"ip": "10.79.0.5", "mac": "52:54:00:00:00:01", "drbd_port": 7800,
                            "drbd_minor": 0, "vnc_display": 1}
    assert first["vm2"]["ip"] == "10.79.0.6" and first["vm2"]["drbd_minor"] == 1
    saved = master.registry_file()
    assert runner.allocate() == {"default": first}
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
    (("web", "hostC", 512, "2G"), {}, r"hostC is not a host of a pair: its pillar has no pairvm:pair"),
    (("web", "hostA", 512, "2G"), {"pair": "two"}, r"home hostA is a host of pair 'default', not 'two'"),
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
    assert allocated.functions() == []  # at most a ping
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
    assert ret["pair"] == "default"
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
    allocation = runner.allocate()["default"]
    assert allocation["db"] == {"ip": "10.79.0.7", "mac": "52:54:00:00:00:03", "drbd_port": 7802,
                                "drbd_minor": 2, "vnc_display": 3}
    assert "web" not in allocation


def test_destroy_failing_on_a_host_keeps_the_registry_entry(web):
    fail_on(web, "pairvm.destroy", "hostB", "lvremove there/web failed")
    ret = runner.destroy("web", confirm=True)
    assert ret["retcode"] == 1 and "hostB: pairvm.destroy failed" in ret["error"]
    assert "web" in web.load_registry()["vms"]


# --- resize ------------------------------------------------------------------------------------------


def resizing(master):
    """Both hosts answer pillar_record and grow the disc (as pairvm.resize does there)."""
    master.handlers["pairvm.pillar_record"] = lambda minion, name: {"name": name, "home": "hostA",
                                                                    "peer": "hostB"}
    master.handlers["pairvm.resize"] = lambda minion, name, size: {"name": name, "changes": [size]}
    return master


def test_resize_grows_the_peer_then_the_home_then_records_the_size(allocated):
    resizing(allocated)
    ret = runner.resize("vm1", "2G")
    order = allocated.functions()
    assert order == [("hostA", "pairvm.pillar_record"), ("hostB", "pairvm.resize"),
                     ("hostA", "pairvm.resize"), ("hostA", "saltutil.refresh_pillar"),
                     ("hostB", "saltutil.refresh_pillar")]
    assert ret == {"name": "vm1", "disc_mib": 2048,
                   "hosts": {"hostB": {"name": "vm1", "changes": ["2G"]},
                             "hostA": {"name": "vm1", "changes": ["2G"]}},
                   "comment": "VM vm1's disc is 2048 MiB on both hosts, recorded in the registry"}
    # vm1 is defined in the pillar files (1G): the registry keeps the grown size beside its
    # allocation, and both hosts' pillar carries it when they refresh
    entry = allocated.load_registry()["vms"]["vm1"]
    assert entry["definition"] is None and entry["disc_mib"] == 2048
    for minion in ("hostA", "hostB"):
        assert allocated.seen_at_refresh[minion]["resized"] == {"vm1": 2048}
        assert allocated.seen_at_refresh[minion]["vms"]["vm1"]["disc"] == "1G"


def test_resize_of_a_cli_created_vm_records_the_size_in_its_definition(allocated):
    runner.create("web", "hostA", 512, "2G")
    allocated.calls.clear()
    resizing(allocated)
    assert runner.resize("web", "3G")["disc_mib"] == 3072
    entry = allocated.load_registry()["vms"]["web"]
    assert entry["definition"]["disc_mib"] == 3072 and "disc_mib" not in entry
    assert schema.vms(allocated.seen_at_refresh["hostB"])["web"]["disc_mib"] == 3072
    assert allocated.seen_at_refresh["hostB"]["resized"] == {}


def test_resize_once_pillar_gives_the_size_drops_the_registry_copy(allocated):
    resizing(allocated)
    runner.resize("vm1", "2G")
    allocated.pillar["vms"]["vm1"]["disc"] = "2G"  # the operator set it in pillar, as verify asks
    runner.resize("vm1", "2G")
    assert "disc_mib" not in allocated.load_registry()["vms"]["vm1"]


@pytest.mark.parametrize("args, message", [
    (("vm1", "-5G"), "must be a whole number of MiB or a size"),
    (("vm1", "12X"), "must be a whole number of MiB or a size"),
    (("bad;name", "2G"), "name: must be 1 to 12 characters"),
])
def test_resize_refuses_bad_input_before_calling_a_host(allocated, args, message):
    resizing(allocated)
    saved = allocated.registry_file()
    ret = runner.resize(*args)
    assert ret["retcode"] == 1 and message in ret["error"], ret
    assert allocated.calls == [] and allocated.registry_file() == saved


def test_resize_refused_on_the_peer_stops_there_and_records_nothing(allocated):
    resizing(allocated)
    saved = allocated.registry_file()

    def refuse(minion, name, size):
        raise MinionFailed(f"VM {name}'s disc is 1024 MiB; pairvm only grows discs")

    allocated.handlers["pairvm.resize"] = refuse
    ret = runner.resize("vm1", "512M")
    assert ret["retcode"] == 1 and "only grows" in ret["error"]
    assert [c for c in allocated.functions() if c[1] == "pairvm.resize"] == [("hostB", "pairvm.resize")]
    assert allocated.registry_file() == saved
    assert not [c for c in allocated.functions() if c[1] == "saltutil.refresh_pillar"]


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
    ("vm1", "hostC", "victim 'hostC' is not a host of VM vm1's pair (hostA, hostB)"),
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


def test_list_merges_both_hosts_and_flags_disagreements(allocated):
    master = allocated
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
    assert {r["pair"] for r in ret["vms"]} == {"default"} and ret["unreachable"] == {}
    both = ["hostA", "hostB"]
    assert master.functions(ping=True) == [(both, "test.ping"), (both, "pairvm.list")]
    assert runner.__context__.get("retcode", 0) == 0


def test_list_names_a_host_that_does_not_answer_and_shows_what_its_peer_says(allocated):
    master = allocated
    master.lists["hostA"]["vms"] = [row("vm1", running=True)]
    master.down.add("hostB")
    ret = runner.list_()
    assert [(r["name"], r["running_on"], r["disagreements"]) for r in ret["vms"]] == [("vm1", ["hostA"], [])]
    assert list(ret["unreachable"]) == ["hostB"]
    assert "did not answer within 8 s" in ret["unreachable"]["hostB"]
    assert master.functions() == [(["hostA"], "pairvm.list")]
    assert runner.__context__["retcode"] == 1


def test_list_names_a_host_whose_pairvm_list_fails(allocated):
    master = allocated
    fail_on(master, "pairvm.list", "hostB", "libvirt: cannot connect")
    ret = runner.list_()
    assert "pairvm.list failed: ERROR: libvirt: cannot connect" in ret["unreachable"]["hostB"]


# --- several pairs -----------------------------------------------------------------------------------


def test_pairs_lists_registered_pairs_and_finds_new_ones_in_pillar(allocated):
    allocated.two()
    assert runner.pairs() == {
        "default": {"hosts": ["hostA", "hostB"], "vms": 2, "registered": True},
        "two": {"hosts": ["hostC", "hostD"], "vms": 0, "registered": False},
    }


@pytest.mark.parametrize("registered", [True, False])
def test_two_pairs_of_hosts_claiming_one_pair_name_stop_the_orchestrates(master, registered):
    """The likeliest mistake: a second pair's pillar without its own pair_name."""
    if registered:
        runner.allocate()
    two = master.two()
    del two["pair_name"]
    for ret in (runner.pairs(), runner.allocate()):
        assert ret["retcode"] == 1 and "pair 'default' is claimed by two pairs of hosts, hostA, hostB and " \
            "hostC, hostD (pillar of hostC): give each pair its own pairvm:pair_name" in ret["error"]
    assert not master.registry_path("two").exists()


def test_two_pairs_allocate_independently_with_macs_unique_across_the_master(allocated):
    allocated.two()
    ret = runner.allocate()
    assert set(ret) == {"default", "two"}
    # the same pool on another public network: the same first address; ports, minors, displays per pair
    assert ret["two"]["db1"] == {"ip": "10.79.0.5", "mac": "52:54:00:00:00:03", "drbd_port": 7800,
                                 "drbd_minor": 0, "vnc_display": 1}
    assert ret["default"]["vm1"]["ip"] == "10.79.0.5" and ret["default"]["vm1"]["mac"] == "52:54:00:00:00:01"
    assert allocated.load_registry("two")["pair"] == {
        "name": "two", "hosts": pair_two()["pair"], "pool": {"cidr": "10.79.0.0/24", "network": "dc2"}}
    assert runner.allocate(pair="two") == {"two": ret["two"]}
    assert runner.allocate(minion="hostD") == {"two": ret["two"]}


@pytest.mark.parametrize("change, message", [
    ({"network": "default"}, r"pool: 10.79.0.0/24 overlaps pair 'default''s pool 10.79.0.0/24 on the same "
                             r"public network 'default'"),
    ({"vm": "vm1"}, r"vm 'vm1': is a VM of pair 'default' already: VM names are unique across the master"),
    ({"host": "hostB"}, r"pair.hostB: is a host of pair 'default' already"),
    ({"name": None}, r"pair 'default' is registered with hosts hostA, hostB, but this pillar gives it "
                     r"hostC, hostD: give each pair its own pairvm:pair_name"),
    ({"mac": "52:54:00:00:00:01"},
     r"mac: '52:54:00:00:00:01' is already allocated in pair 'default' to vm 'vm1'"),
])
def test_a_pair_clashing_with_another_is_refused_before_anything_is_allocated(allocated, change, message):
    two = allocated.two(network=change.get("network", "dc2"))
    if "vm" in change:
        two["vms"][change["vm"]] = two["vms"].pop("db1")
    if "host" in change:
        two["pair"][change["host"]] = two["pair"].pop("hostD")
        two["vms"]["db1"]["home"] = "hostC"
    if "name" in change:
        del two["pair_name"]
    if "mac" in change:
        two["vms"]["db1"]["mac"] = change["mac"]
    saved = allocated.registry_file()
    ret = runner.allocate(minion="hostC")
    assert ret["retcode"] == 1 and re.search(message, ret["error"]), ret["error"]
    assert allocated.registry_file() == saved
    assert not allocated.registry_path("two").exists()


def test_create_in_the_second_pair_reaches_its_hosts_only(allocated):
    allocated.two()
    runner.allocate()
    allocated.calls.clear()
    ret = runner.create("web", "hostC", 256, "1G", pair="two")
    assert ret["pair"] == "two" and ret["drbd"]["connection"] == "Connected"
    assert {t for t, _ in allocated.functions()} == {"hostC", "hostD"}
    assert allocated.load_registry("two")["vms"]["web"]["alloc"]["ip"] == "10.79.0.6"
    assert "web" not in allocated.load_registry()["vms"]
    seen = allocated.seen_at_refresh["hostD"]
    assert set(seen["vms"]) == {"db1", "web"} and set(seen["allocations"]) == {"db1", "web"}
    assert set(allocated.compiled_pillar("hostA")["allocations"]) == {"vm1", "vm2"}
    # a name of the other pair is refused
    ret = runner.create("vm1", "hostC", 256, "1G")
    assert ret["retcode"] == 1 and "is a VM of pair 'default' already" in ret["error"]


def test_destroy_finds_the_pair_from_the_registry_and_leaves_the_other_alone(allocated):
    allocated.two()
    runner.allocate()
    allocated.calls.clear()
    saved = allocated.registry_file()
    ret = runner.destroy("db1", confirm=True)
    assert ret["pair"] == "two"
    assert {t for t, _ in allocated.functions()} == {"hostC", "hostD"}
    assert "db1" not in allocated.load_registry("two")["vms"]
    assert allocated.registry_file() == saved


def test_a_vm_in_no_registry_needs_pair_to_be_destroyed(allocated):
    ret = runner.destroy("ghost", confirm=True)
    assert ret["retcode"] == 1 and "VM ghost is in no pair's registry" in ret["error"]
    assert allocated.functions(ping=True) == []
    ret = runner.destroy("ghost", confirm=True, pair="default")
    assert ret["name"] == "ghost"
    assert [c for c in allocated.functions() if c[1] == "pairvm.destroy"] == [
        ("hostA", "pairvm.destroy"), ("hostB", "pairvm.destroy")]


def test_list_covers_every_pair_in_one_publish_or_one_pair(allocated):
    allocated.two()
    runner.allocate()
    allocated.calls.clear()
    allocated.lists["hostA"]["vms"] = allocated.lists["hostB"]["vms"] = [row("vm1")]
    allocated.lists["hostC"]["vms"] = allocated.lists["hostD"]["vms"] = [row("db1", running=True)]
    ret = runner.list_()
    assert [(r["pair"], r["name"]) for r in ret["vms"]] == [("default", "vm1"), ("two", "db1")]
    assert allocated.functions() == [(["hostA", "hostB", "hostC", "hostD"], "pairvm.list")]
    assert [(r["pair"], r["name"]) for r in runner.list_(pair="two")["vms"]] == [("two", "db1")]
    assert runner.list_(pair="three")["retcode"] == 1


# --- fail fast: a host that does not answer --------------------------------------------------------


@pytest.mark.parametrize("call", [
    lambda: runner.create("web", "hostA", 512, "2G"),
    lambda: runner.destroy("vm1", confirm=True, force=True),
    lambda: runner.resize("vm1", "2G"),
    lambda: runner.split_brain_victim("vm1", "hostA"),
], ids=["create", "destroy", "resize", "split_brain_victim"])
def test_a_silent_host_is_refused_by_name_before_anything_changes(allocated, call):
    allocated.down.add("hostB")
    saved = allocated.registry_file()
    ret = call()
    assert ret["retcode"] == 1
    assert "hostB did not answer a ping within 8 s" in ret["error"] and "Nothing was changed" in ret["error"]
    assert allocated.functions() == []
    assert allocated.calls == [(["hostA", "hostB"], "test.ping", [], {})]
    assert allocated.registry_file() == saved


def test_the_ping_waits_briefly_for_the_silent(allocated, monkeypatch):
    seen = {}

    def cmd(tgt, fun, arg=(), **kwargs):
        seen.update(kwargs, fun=fun)
        return {"hostA": {"ret": True, "retcode": 0}}

    monkeypatch.setattr(allocated, "cmd", cmd)
    assert master_lib.Master({"conf_file": "x"}).silent(["hostA", "hostB"]) == ["hostB"]
    assert (seen["fun"], seen["timeout"], seen["gather_job_timeout"], seen["tgt_type"]) == \
        ("test.ping", 5, 3, "list")


# --- the DRBD secret -------------------------------------------------------------------------------


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_allocate_generates_each_pair_a_secret_once_root_only_and_serves_it_to_its_hosts(allocated):
    allocated.two()
    runner.allocate()
    secrets = {}
    for pair, host in (("default", "hostA"), ("two", "hostC")):
        path = allocated.registry_path(pair).parent / "drbd-secret"
        secrets[pair] = path.read_text().strip()
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", secrets[pair])
        assert (mode(path), mode(path.parent), mode(allocated.registry_path(pair))) == (0o600, 0o700, 0o600)
        assert allocated.compiled_pillar(host)["drbd_options"]["shared_secret"] == secrets[pair]
    assert secrets["default"] != secrets["two"]
    assert mode(allocated.cachedir / "pairvm") == 0o700
    runner.allocate()
    assert (allocated.registry_path("two").parent / "drbd-secret").read_text().strip() == secrets["two"]
    # nothing of the other pair reaches a host
    text = json.dumps(allocated.compiled("hostC"))
    assert secrets["default"] not in text and "vm1" not in text and "hostA" not in text


def test_a_secret_pillar_gives_is_used_and_none_is_generated(master):
    master.pillar["drbd_options"] = {"shared_secret": "Zm9v+bar/baz="}
    runner.allocate()
    assert not (master.registry.parent / "drbd-secret").exists()
    assert master.compiled_pillar()["drbd_options"] == {"shared_secret": "Zm9v+bar/baz="}


def test_the_single_registry_of_before_becomes_pair_defaults(master):
    legacy = master.cachedir / "pairvm" / "registry.json"
    legacy.parent.mkdir(parents=True)
    alloc = {"ip": "10.79.0.9", "mac": "52:54:00:00:00:09", "drbd_port": 7809, "drbd_minor": 9,
             "vnc_display": 9}
    legacy.write_text(json.dumps({"vms": {"vm1": {"definition": None, "alloc": alloc}}}))
    assert master.compiled_pillar()["allocations"]["vm1"] == alloc  # read before the move
    assert runner.allocate()["default"]["vm1"] == alloc
    assert master.load_registry()["vms"]["vm1"]["alloc"] == alloc
    assert not legacy.exists() and legacy.with_name("registry.json.before-pairs").exists()


@pytest.mark.parametrize("registered", ["no", "yes", "before pairs"])
def test_the_pillar_of_the_only_pair_for_runners_that_name_none(master, registered):
    """Master.pillar() without a minion, as a runner file written for one pair calls it."""
    if registered == "yes":
        runner.allocate()
    elif registered == "before pairs":  # a registry that records no hosts
        (master.cachedir / "pairvm").mkdir(parents=True)
        (master.cachedir / "pairvm" / "registry.json").write_text('{"vms": {}}')
    assert set(master_lib.Master(runner.__opts__).pillar()["pair"]) == {"hostA", "hostB"}
    master.two()
    runner.allocate()
    with pytest.raises(master_lib.Failed, match="this master has 2 pairs"):
        master_lib.Master(runner.__opts__).pillar()
    assert set(master_lib.Master(runner.__opts__).pillar(pair="two")["pair"]) == {"hostC", "hostD"}
