"""_runners/pairvm_migrate.py with the master's view faked: which host a call goes to,
what evacuate and return move, and how they report a VM that cannot move."""

import pytest

from pairvmlib.errors import Failed
from tests.unit.conftest import load, pair_pillar

runner = load("_runners/pairvm_migrate.py", "pairvm_migrate_runner")


def row(name, running, location="home"):
    return {"name": name, "running": running, "location": location}


class FakeMaster:
    """Both hosts' pairvm.list and the calls the runner makes."""

    def __init__(self):
        self.lists = {"hostA": [], "hostB": []}
        self.calls, self.refuse, self.down, self.asked = [], {}, set(), []

    def __call__(self, opts):
        return self

    def pair(self, pair=None, vm=None):
        """As Master.pair: the pair named, else the one whose registry holds ``vm``."""
        self.asked.append((pair, vm))
        return "default", ["hostA", "hostB"]

    def pillar(self, minion=None):
        if minion not in self.lists:
            raise Failed(f"{minion} is not a host of a pair: its pillar has no pairvm:pair naming it")
        return pair_pillar()

    def require(self, hosts):
        if self.down & set(hosts):
            raise Failed(f"{', '.join(sorted(self.down))} did not answer a ping within 8 s")

    def call(self, minion, function, *args, timeout=300, **kwargs):
        if function == "pairvm.list":
            return {"vms": self.lists[minion]}
        self.calls.append((minion, function, args, kwargs))
        if args and args[0] in self.refuse:
            raise Failed(f"{minion}: {function} failed: {self.refuse[args[0]]}")
        return {"name": args[0], "changes": ["virsh migrate"], "comment": "moved"}


@pytest.fixture
def mst(monkeypatch, loader_mock):
    fake = FakeMaster()
    loader_mock(runner, opts={})
    monkeypatch.setattr(runner.master, "Master", fake)
    return fake


def test_migrate_runs_on_the_host_that_runs_the_vm(mst):
    mst.lists["hostB"] = [row("vm1", True, "away")]
    mst.lists["hostA"] = [row("vm1", False)]
    ret = runner.migrate("vm1")
    assert list(ret) == ["hostB"]
    assert mst.calls == [("hostB", "pairvm.migrate", ("vm1",), {"away": False, "cleanup": False,
                                                                 "test": False})]


def test_migrate_passes_the_limits_on(mst):
    mst.lists["hostA"] = [row("vm1", True)]
    runner.migrate("vm1", away=True, max_downtime=50, bandwidth=100)
    assert mst.calls[0][3] == {"away": True, "cleanup": False, "test": False, "max_downtime": 50,
                               "bandwidth": 100}


@pytest.mark.parametrize("where", [[], ["hostA", "hostB"]])
def test_migrate_refuses_a_vm_that_does_not_run_on_exactly_one_host(mst, where):
    for host in where:
        mst.lists[host] = [row("vm1", True)]
    ret = runner.migrate("vm1")
    assert ret["retcode"] == 1 and "exactly one host" in ret["error"] and mst.calls == []


def test_cleanup_goes_to_a_host_even_when_the_vm_runs_nowhere(mst):
    ret = runner.migrate("vm1", cleanup=True)
    assert list(ret) == ["hostA"] and mst.calls[0][3]["cleanup"] is True


def test_a_bad_name_is_refused_before_any_call(mst):
    ret = runner.migrate("vm1;x")
    assert ret["retcode"] == 1 and mst.calls == []


def test_evacuate_moves_each_running_vm_and_lists_those_that_cannot(mst):
    mst.lists["hostA"] = [row("vm1", True), row("vm2", False), row("vm3", True, "away")]
    mst.refuse = {"vm3": "bridge br0 does not exist on hostB"}
    ret = runner.evacuate("hostA")
    assert [(c[0], c[2][0], c[3]["away"]) for c in mst.calls] == [("hostA", "vm1", True),
                                                                 ("hostA", "vm3", True)]
    assert list(ret["moved"]) == ["vm1"]
    assert "bridge br0 does not exist on hostB" in ret["not_moved"]["vm3"]
    assert runner.__context__["retcode"] == 1 and ret["retcode"] == 1


def test_evacuate_refuses_a_host_outside_the_pair(mst):
    ret = runner.evacuate("hostC")
    assert ret["retcode"] == 1 and "hostC is not a host of a pair" in ret["error"] and mst.calls == []


@pytest.mark.parametrize("call", [lambda: runner.migrate("vm1"), lambda: runner.evacuate("hostA"),
                                  lambda: runner.return_("hostB")], ids=["migrate", "evacuate", "return"])
def test_a_host_of_the_pair_that_does_not_answer_stops_everything(mst, call):
    mst.lists["hostA"] = [row("vm1", True)]
    mst.down = {"hostB"}
    ret = call()
    assert ret["retcode"] == 1 and "hostB did not answer a ping" in ret["error"] and mst.calls == []


def test_migrate_finds_the_vms_pair_or_takes_the_one_named(mst):
    mst.lists["hostA"] = [row("vm1", True)]
    runner.migrate("vm1")
    runner.migrate("vm1", pair="default")
    assert mst.asked == [(None, "vm1"), ("default", None)]


def test_return_brings_home_what_runs_away_on_the_peer(mst):
    mst.lists["hostB"] = [row("vm1", True, "away"), row("vm2", True, "home"), row("vm4", False, "away")]
    ret = runner.return_("hostA")
    assert [(c[0], c[2][0]) for c in mst.calls] == [("hostB", "vm1")]
    assert ret == {"moved": {"vm1": {"name": "vm1", "changes": ["virsh migrate"], "comment": "moved"}},
                   "not_moved": {}, "retcode": 0}
    assert runner.__func_alias__ == {"return_": "return"}


# --- swap ------------------------------------------------------------------------------------------


class SwapMaster(FakeMaster):
    """Both hosts' pairvm.swap, in the order the runner asks them, and DRBD once up."""

    def __init__(self):
        super().__init__()
        self.fail = {}  # (host, phase): message of that host's pairvm.swap
        self.sha = {"hostA": "same", "hostB": "same"}
        self.drbd = {"connected": True, "up_to_date": True, "syncing": False}

    def call(self, minion, function, *args, timeout=300, **kwargs):
        self.calls.append((minion, function, args, kwargs))
        if function == "pairvm.pillar_record":
            return {"home": "hostA"}
        if function == "drbd.status":
            return self.drbd
        return True

    def call_each(self, calls, timeout=300):
        answers = {}
        for minion, (function, args, kwargs) in sorted(calls.items()):
            phase = "test" if kwargs.get("test") else "finish" if kwargs.get("finish") else "copy"
            self.calls.append((minion, function, args, kwargs))
            if (minion, phase) in self.fail:
                answers[minion] = {"ret": self.fail[minion, phase], "retcode": 1}
            else:
                answers[minion] = {"ret": {"changes": [f"{phase} on {minion}"],
                                           "record_sha256": self.sha[minion]}, "retcode": 0}
        return answers


@pytest.fixture
def swap_mst(monkeypatch, loader_mock, tmp_path):
    fake = SwapMaster()
    loader_mock(runner, opts={"cachedir": str(tmp_path)})
    monkeypatch.setattr(runner.master, "Master", fake)
    monkeypatch.setattr(runner, "SYNC_WAIT", 0)
    with runner.registry.locked(runner.__opts__, "default") as box:
        box["registry"] = {"vms": {"vm1": {"definition": None, "alloc": {}}}}
    return fake


def saved(name="vm1"):
    return runner.registry.read(runner.__opts__, "default")["vms"][name]


def phases(mst):
    return [(m, "test" if k.get("test") else "finish" if k.get("finish") else "copy", k.get("resume"))
            for m, f, a, k in mst.calls if f == "pairvm.swap"]


def test_swap_checks_both_then_copies_both_then_finishes_both(swap_mst):
    ret = runner.swap("vm1")
    assert ret["home"] == "hostB" and ret["resynced"] is False
    assert ret["changes"] == {"hostA": ["copy on hostA", "finish on hostA"],
                              "hostB": ["copy on hostB", "finish on hostB"]}
    assert phases(swap_mst) == [("hostA", "test", False), ("hostB", "test", False),
                                ("hostA", "copy", True), ("hostB", "copy", True),
                                ("hostA", "finish", None), ("hostB", "finish", None)]
    assert all(k["home"] == "hostB" for m, f, a, k in swap_mst.calls if f == "pairvm.swap")
    assert saved() == {"definition": None, "alloc": {}, "home": "hostB"}  # pillar gives hostA
    refreshed = [m for m, f, a, k in swap_mst.calls if f == "saltutil.refresh_pillar"]
    assert refreshed == ["hostA", "hostB"]


@pytest.mark.parametrize(("fail", "why"), [
    ({("hostB", "test"): "VM vm1 cannot move home on hostB: it is running on this host"},
     "hostB: VM vm1 cannot move home on hostB: it is running"),
    ({("hostA", "test"): "DRBD resource vm1 is Connecting"}, "hostA: DRBD resource vm1 is Connecting"),
])
def test_a_refusal_of_either_host_changes_nothing(swap_mst, fail, why):
    swap_mst.fail = fail
    ret = runner.swap("vm1")
    assert ret["retcode"] == 1 and why in ret["error"]
    assert [p for p in phases(swap_mst) if p[1] != "test"] == []
    assert saved() == {"definition": None, "alloc": {}}


def test_records_that_differ_between_the_hosts_are_refused(swap_mst):
    swap_mst.sha["hostB"] = "other"
    assert "/machines/vm1 differs between hostA and hostB" in runner.swap("vm1")["error"]
    assert saved() == {"definition": None, "alloc": {}}


def test_test_only_asks_both_hosts(swap_mst):
    ret = runner.swap("vm1", test=True)
    assert ret["comment"] == "would make hostB the home of VM vm1"
    assert phases(swap_mst) == [("hostA", "test", False), ("hostB", "test", False)]
    assert saved() == {"definition": None, "alloc": {}}


def test_an_interrupted_swap_is_recorded_and_finished_by_the_next_run(swap_mst):
    swap_mst.fail = {("hostB", "copy"): "lvcreate here/vm1 failed: insufficient free space"}
    ret = runner.swap("vm1")
    assert ret["retcode"] == 1 and "hostB: lvcreate here/vm1 failed" in ret["error"]
    assert saved()["swap"] == {"to": "hostB"} and "home" not in saved()  # the old LVs are the disc
    swap_mst.fail, swap_mst.calls = {}, []
    # the next run goes on to the same home, although pillar_record still says hostA
    assert runner.swap("vm1")["home"] == "hostB"
    assert phases(swap_mst)[:2] == [("hostA", "test", True), ("hostB", "test", True)]
    assert saved() == {"definition": None, "alloc": {}, "home": "hostB"}


def test_the_old_lvs_stay_when_drbd_does_not_connect_on_the_new_ones(swap_mst):
    swap_mst.drbd = {"connected": False, "up_to_date": False, "connection": "WFConnection"}
    ret = runner.swap("vm1")
    assert "is WFConnection" in ret["error"] and "the old LVs are kept" in ret["error"]
    assert [p[1] for p in phases(swap_mst)] == ["test", "test", "copy", "copy"]
    assert saved()["swap"] == {"to": "hostB"}


def test_a_vm_created_from_the_cli_gets_its_new_home_in_its_definition(swap_mst):
    with runner.registry.locked(runner.__opts__, "default") as box:
        box["registry"] = {"vms": {"vm1": {"definition": {"home": "hostA", "memory": 128}, "alloc": {}}}}
    runner.swap("vm1")
    assert saved() == {"definition": {"home": "hostB", "memory": 128}, "alloc": {}}
