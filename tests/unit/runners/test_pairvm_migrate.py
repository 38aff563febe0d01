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
