"""_runners/pairvm_backup.py with the master mocked: the hosts answer through a fake LocalClient
that publishes jobs (run_job) and hands their returns over later (get_cli_event_returns).

The real two-host run is tests/integration/test_backup.py
(test_the_runner_backs_each_vm_up_on_the_host_not_running_it).
"""

import json

import pytest

from pairvmlib import master as master_lib
from tests.unit.conftest import load

runner = load("_runners/pairvm_backup.py", "pairvm_backup_runner")
DEST = "bk@store:/b/_NAME.gz"


class Client:
    """Two hosts; ``lists`` is what pairvm.list answers, ``backups`` how pairvm.backup answers."""

    def __init__(self):
        self.published, self.log = [], []  # log: ("publish" | "gather", host, function)
        self.lists = {"hostA": [("vm1", True, "home"), ("vm2", False, "away")],
                      "hostB": [("vm1", False, "away"), ("vm2", True, "home")]}
        self.backups = {}  # host: (ret, retcode); default: each VM backed up

    def cmd(self, tgt, fun, arg, tgt_type, full_return, **kwargs):
        assert fun == "test.ping" and tgt_type == "list"
        self.log.append(("ping", ",".join(tgt), fun))
        return {host: {"ret": True} for host in tgt if host in self.lists}

    def run_job(self, tgt, fun, arg, tgt_type, kwarg, timeout, listen):
        assert tgt_type == "list" and len(tgt) == 1 and listen
        self.published.append((tgt[0], fun, kwarg))
        self.log.append(("publish", tgt[0], fun))
        return {"jid": str(len(self.published)), "minions": tgt}

    def get_cli_event_returns(self, jid, minions, timeout, tgt, tgt_type):
        host, fun, kwarg = self.published[int(jid) - 1]
        self.log.append(("gather", host, fun))
        if fun == "pairvm.list":
            rows = [{"name": n, "running": r, "location": loc} for n, r, loc in self.lists[host]]
            yield {host: {"ret": {"vms": rows}, "retcode": 0}}
        elif host in self.backups:
            ret, retcode = self.backups[host]
            if ret is not None:
                yield {host: {"ret": ret, "retcode": retcode}}
            else:
                yield {host: {"out": "no_return", "ret": "Minion did not return", "retcode": 1}}
        else:
            names = kwarg["name"].split(",")
            done = {"changes": ["lvcreate"], "comment": "backed up", "sha256": "ab" * 32, "bytes": 1}
            ret = dict(done, name=names[0]) if len(names) == 1 else \
                {"name": kwarg["name"], "vms": {n: dict(done, result=True) for n in names}}
            yield {host: {"ret": ret, "retcode": 0}}

    def backup_calls(self):
        return {host: kwarg for host, fun, kwarg in self.published if fun == "pairvm.backup"}


def register(cachedir, pair, hosts, vms):
    """A pair's registry as the runner's allocate leaves it."""
    path = cachedir / "pairvm" / "pairs" / pair
    path.mkdir(parents=True)
    (path / "registry.json").write_text(json.dumps({
        "pair": {"name": pair, "hosts": dict.fromkeys(hosts, {}), "pool": None},
        "vms": {vm: {"definition": None, "alloc": {}} for vm in vms}}))


@pytest.fixture
def client(monkeypatch, loader_mock, tmp_path):
    fake = Client()
    register(tmp_path, "default", ["hostA", "hostB"], ["vm1", "vm2"])
    loader_mock(runner, opts={"conf_file": "/etc/salt/master", "cachedir": str(tmp_path)})
    monkeypatch.setattr(master_lib.salt.client, "get_local_client", lambda conf_file=None: fake)
    fake.cachedir = tmp_path
    return fake


@pytest.fixture
def two_pairs(client):
    """A second pair, hostC and hostD, with vm3 running on hostC."""
    register(client.cachedir, "two", ["hostC", "hostD"], ["vm3"])
    client.lists.update({"hostC": [("vm3", True, "home")], "hostD": [("vm3", False, "away")]})
    return client


def test_each_vm_goes_to_the_host_not_running_it_and_both_hosts_run_at_once(client):
    ret = runner.backup("all", DEST, speed=2048)
    assert client.backup_calls() == {
        "hostA": {"name": "vm2", "destination": DEST, "test": False, "speed": 2048},
        "hostB": {"name": "vm1", "destination": DEST, "test": False, "speed": 2048}}
    # both hosts were asked at once, and both backups started before either return was waited for
    assert [(step, fun) for step, _host, fun in client.log] == [
        ("ping", "test.ping"), ("publish", "pairvm.list"), ("publish", "pairvm.list"),
        ("gather", "pairvm.list"), ("gather", "pairvm.list"),
        ("publish", "pairvm.backup"), ("publish", "pairvm.backup"),
        ("gather", "pairvm.backup"), ("gather", "pairvm.backup")]
    assert ret["result"] is True and "retcode" not in ret and runner.__context__ == {}
    assert {vm: (r["host"], r["result"]) for vm, r in ret["vms"].items()} == {
        "vm1": ("hostB", True), "vm2": ("hostA", True)}
    assert ret["comment"] == "backed up: vm1 (hostB), vm2 (hostA)"


def test_a_vm_running_nowhere_goes_to_its_home_host_with_the_others_of_that_host(client):
    client.lists = {"hostA": [("vm1", False, "home"), ("vm2", True, "away")],
                    "hostB": [("vm1", False, "away"), ("vm2", False, "home")]}
    ret = runner.backup("vm1,vm2", DEST, compress="zstd")
    assert client.backup_calls() == {"hostA": {"name": "vm1", "destination": DEST, "test": False,
                                               "compress": "zstd"},
                                     "hostB": {"name": "vm2", "destination": DEST, "test": False,
                                               "compress": "zstd"}}
    assert ret["hosts"] == {"hostA": ["vm1"], "hostB": ["vm2"]} and ret["result"] is True


def test_one_failed_or_silent_host_fails_the_job_but_not_the_other_vms(client):
    client.backups["hostB"] = ("ERROR: cannot back up to bk@store:/b/vm1.gz: Connection refused", 1)
    ret = runner.backup("all", DEST)
    assert ret["retcode"] == 1 and runner.__context__["retcode"] == 1
    assert ret["vms"]["vm2"]["result"] is True and ret["vms"]["vm1"]["result"] is False
    assert "FAILED: vm1 (hostB): ERROR: cannot back up" in ret["comment"]
    client.backups["hostB"] = (None, 1)
    assert runner.backup("all", DEST)["vms"]["vm1"]["comment"] == "hostB did not answer"


def test_a_skip_or_a_vm_running_twice_is_a_failure_of_that_vm(client):
    client.lists["hostB"][0] = ("vm1", True, "away")  # vm1 runs on both hosts
    skipped = {"result": None, "comment": "skipped: it runs on this host"}
    client.backups["hostA"] = ({"name": "vm2", "vms": {"vm2": skipped}}, 0)
    ret = runner.backup("all", DEST)
    assert ret["vms"]["vm1"] == {"host": None, "result": False,
                                 "comment": "it runs on hostA and hostB (salt-run pairvm.verify)"}
    assert ret["vms"]["vm2"]["result"] is False and ret["retcode"] == 1
    assert list(client.backup_calls()) == ["hostA"]


@pytest.mark.parametrize("args, why", [
    (("vm9", DEST), "VM vm9 is in no pair's registry"),
    (("all", "bk@store:/b/one.gz"), "must contain _NAME"),
    (("vm1,vm2", "bk@store:/b/one.gz"), "must contain _NAME"),
    (("vm1", "-oProxyCommand=x@store:/b/x"), "must not start with '-'"),
    (("Bad!", DEST), "Bad!"),
    (("vm1", DEST, -1), "backup.speed"),
])
def test_bad_input_is_refused_before_any_backup_starts(client, args, why):
    ret = runner.backup(*args)
    assert ret["retcode"] == 1 and why in ret["error"], ret
    assert client.backup_calls() == {}


def test_a_host_that_does_not_list_its_vms_stops_everything(client):
    client.lists["hostB"] = None
    original = client.get_cli_event_returns

    def silent_b(jid, minions, *args):
        if minions == ["hostB"]:
            return iter(())
        return original(jid, minions, *args)

    client.get_cli_event_returns = silent_b
    ret = runner.backup("all", DEST)
    assert "hostB did not answer pairvm.list" in ret["error"] and client.backup_calls() == {}


def test_all_backs_up_every_pair_at_once_and_a_list_each_vms_own_pair(two_pairs):
    ret = runner.backup("all", DEST)
    assert {host: kw["name"] for host, kw in two_pairs.backup_calls().items()} == {
        "hostA": "vm2", "hostB": "vm1", "hostD": "vm3"}
    assert ret["result"] is True and ret["hosts"] == {"hostA": ["vm2"], "hostB": ["vm1"], "hostD": ["vm3"]}
    two_pairs.published.clear()
    runner.backup("vm3,vm1", DEST)
    assert {host: kw["name"] for host, kw in two_pairs.backup_calls().items()} == {"hostB": "vm1",
                                                                                  "hostD": "vm3"}
    two_pairs.published.clear()
    assert runner.backup("all", DEST, pair="two")["hosts"] == {"hostD": ["vm3"]}
    assert sorted(two_pairs.backup_calls()) == ["hostD"]


def test_a_silent_host_of_any_pair_stops_everything_before_a_backup(two_pairs):
    del two_pairs.lists["hostD"]  # does not answer the ping
    ret = runner.backup("all", DEST)
    assert ret["retcode"] == 1 and "hostD did not answer a ping" in ret["error"], ret
    assert two_pairs.published == []


@pytest.mark.parametrize("args, kwargs, why", [
    (("vm9", DEST), {}, "VM vm9 is in no pair's registry"),
    (("vm3", DEST), {"pair": "default"}, "no such VM on the pair hostA and hostB: vm3"),
    (("all", DEST), {"pair": "three"}, "pair 'three' has no registry recording its hosts"),
])
def test_a_vm_or_pair_the_registries_do_not_know_is_refused(two_pairs, args, kwargs, why):
    ret = runner.backup(*args, **kwargs)
    assert ret["retcode"] == 1 and why in ret["error"], ret
    assert two_pairs.backup_calls() == {}
