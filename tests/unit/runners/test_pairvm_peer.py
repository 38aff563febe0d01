"""_runners/pairvm_peer.py with the master mocked (the fake master of test_pairvm.py): what a
pair host runs on the master through publish.runner, the CD recorded on both hosts, the ACL.

``__opts__["id"]`` is the caller, as the master sets it for a peer runner call.
"""

import re
from pathlib import Path

import pytest
import yaml

from pairvmlib import master as master_lib
from pairvmlib import peer as peer_lib
from pairvmlib import peerjobs as peer_jobs
from salt.utils.args import parse_input
from tests.unit.conftest import load
from tests.unit.runners.test_pairvm import Master, runner

peer = load("_runners/pairvm_peer.py", "pairvm_peer_runner")


class PeerMaster(Master):
    """The fake master, with the hosts' pairvm.cdrom and file.file_exists."""

    def __init__(self, tmp_path, monkeypatch, loader_mock):
        super().__init__(tmp_path, monkeypatch, loader_mock)
        self.opts = runner.__opts__
        loader_mock(peer, salt={"pairvm.create": runner.create, "pairvm.verify": runner.verify},
                    opts={**self.opts, "id": "hostA"})
        self.jobs = []  # (caller, argv) of each job started
        monkeypatch.setattr(peer_jobs, "start", lambda opts, caller, argv: self.jobs.append((caller, argv))
                            or "ab" * 16)
        self.files = {"hostA": {"/srv/iso/d.iso"}, "hostB": {"/srv/iso/d.iso"}}
        self.running = {"hostA": False, "hostB": False}
        self.handlers.update({
            "file.file_exists": lambda minion, path: path in self.files[minion],
            "pairvm.cdrom": self._cdrom,
            "pairvm.create": self._create,
        })

    def _create(self, minion, name):
        """The record this host writes from its pillar (as at its last refresh)."""
        cdroms = self.seen_at_refresh.get(minion, {}).get("cdroms", {})
        return {"name": name, "changes": [f"write /machines/{name} cdrom={cdroms.get(name)}"], "comment": ""}

    def _cdrom(self, minion, name, iso=None, eject=False):
        shown = {"name": name, "cdrom": None, "recorded": None, "running": self.running[minion],
                 "changes": [], "comment": ""}
        if iso or eject:
            shown["changes"] = [f"virsh change-media {name}"] if self.running[minion] else []
        return shown


@pytest.fixture
def pm(tmp_path, monkeypatch, loader_mock):
    master = PeerMaster(tmp_path, monkeypatch, loader_mock)
    runner.allocate()
    master.calls.clear()
    return master


def caller(minion):
    peer.__opts__["id"] = minion


# --- host_create ---------------------------------------------------------------------------------


def job_of(pm):
    """(caller, runner function, its kwargs) of the one job started, decoded as salt-run decodes
    its argv (Salt's own parser, with the job's --no-parse)."""
    (caller, argv), = pm.jobs
    options = [a for a in argv if a.startswith("--")]
    assert f"--config-dir={Path(pm.opts['conf_file']).parent}" in options and "--out=json" in options
    no_parse = next((o.split("=", 1)[1].split(",") for o in options if o.startswith("--no-parse=")), [])
    function, *args = [a for a in argv[3:] if not a.startswith("--")]
    positional, kwargs = parse_input(args, condition=False, no_parse=no_parse)
    assert positional == []
    return caller, function, kwargs


@pytest.mark.parametrize("who, where, home", [("hostA", "here", "hostA"), ("hostA", "there", "hostB"),
                                              ("hostB", "here", "hostB"), ("hostB", "there", "hostA")])
def test_host_create_starts_the_operators_create_with_the_caller_or_its_peer_as_home(pm, who, where, home):
    caller(who)
    started = peer.host_create("yes", where, 512, "2G")
    assert started == {"job": "ab" * 16, "comment": f"started pairvm.create on the master as job {'ab' * 16}"}
    assert job_of(pm) == (who, "pairvm.create", {"name": "yes", "home": home, "memory": 512, "disc": "2G"})
    assert pm.calls == []  # the job does the work: the peer runner waits for no host


def test_host_create_passes_the_options_given(pm):
    peer.host_create("web", "here", 512, "2G", vcpus=2, ip="10.79.0.50")
    assert job_of(pm)[2] == {"name": "web", "home": "hostA", "memory": 512, "disc": "2G", "vcpus": 2,
                             "ip": "10.79.0.50"}


def test_the_create_the_job_runs_names_ip_mac_and_vnc(pm):
    peer.host_create("web", "here", 512, "2G")
    _, function, kwargs = job_of(pm)
    ret = runner.create(**kwargs)
    assert function == "pairvm.create"
    assert (ret["home"], ret["ip"], ret["mac"], ret["vnc_display"]) == ("hostA", "10.79.0.7",
                                                                        "52:54:00:00:00:03", 3)


@pytest.mark.parametrize("who", ["hostC", "saltmaster_master", "hostA2"])
def test_only_a_host_of_a_pair_may_create_and_nothing_is_started_else(pm, who):
    caller(who)
    ret = peer.host_create("web", "here", 512, "2G")
    assert ret["retcode"] == 1 and ret["error"].startswith(f"{who} is not a host of a pair")
    assert "salt-run pairvm.create" in ret["error"]
    assert pm.jobs == [] and pm.calls == []


@pytest.mark.parametrize("args, message", [
    (("web", "hostB", 512, "2G"), "where must be here or there, got 'hostB'"),
    (("we;b", "here", 512, "2G"), "name: must be 1 to 12 characters"),
])
def test_host_create_refuses_a_bad_request_before_starting_anything(pm, args, message):
    assert message in peer.host_create(*args)["error"] and pm.jobs == []


# --- cdrom ------------------------------------------------------------------------------------------


def test_cdrom_records_the_cd_then_rewrites_both_records_then_changes_it_where_the_vm_runs(pm):
    pm.running["hostB"] = True
    ret = peer.cdrom("vm1", iso="/srv/iso/d.iso")
    assert pm.load_registry()["vms"]["vm1"]["cdrom"] == {"path": "/srv/iso/d.iso", "pillar": None}
    calls = [c for c in pm.functions() if c[1] != "file.file_exists"]
    assert calls == [("hostA", "pairvm.cdrom"), ("hostB", "pairvm.cdrom"),  # what each shows now
                     ("hostA", "saltutil.refresh_pillar"), ("hostB", "saltutil.refresh_pillar"),
                     ("hostA", "pairvm.create"), ("hostB", "pairvm.create"),
                     ("hostA", "pairvm.cdrom"), ("hostB", "pairvm.cdrom")]
    record = "write /machines/vm1 cdrom={'path': '/srv/iso/d.iso', 'pillar': None}"
    assert ret["changes"] == {"hostA": [record], "hostB": [record, "virsh change-media vm1"]}
    assert pm.seen_at_refresh["hostB"]["cdroms"]["vm1"]["path"] == "/srv/iso/d.iso"
    media = [kw for tgt, fun, _, kw in pm.calls if fun == "pairvm.cdrom"]
    assert media[-2:] == [{"iso": "/srv/iso/d.iso"}] * 2
    ejected = peer.cdrom("vm1", eject=True)
    assert pm.load_registry()["vms"]["vm1"]["cdrom"] == {"path": None, "pillar": None}
    assert ejected["comment"] == "VM vm1's CD is empty on both hosts"


def test_cdrom_with_test_lists_what_it_would_do_and_records_nothing(pm):
    pm.running["hostA"] = True
    saved = pm.registry_file()
    ret = peer.cdrom("vm1", iso="/srv/iso/d.iso", test=True)
    assert ret["changes"] == {
        "hostA": ["write /machines/vm1 (cdrom: /srv/iso/d.iso)",
                  "virsh change-media vm1 --insert /srv/iso/d.iso"],
        "hostB": ["write /machines/vm1 (cdrom: /srv/iso/d.iso)"]}
    assert ret["comment"].startswith("would: record /srv/iso/d.iso for VM vm1")
    assert pm.registry_file() == saved
    assert {fun for _, fun in pm.functions()} == {"file.file_exists", "pairvm.cdrom"}


@pytest.mark.parametrize("kwargs, message", [
    ({"iso": "/srv/iso/other.iso"}, "cdrom: /srv/iso/other.iso is not a file on hostA: the VM may start on "
                                    "either host, so the ISO must be at the same absolute path on both"),
    ({"iso": "srv/iso/d.iso"}, "is not a file on hostA"),
    ({}, "give iso=PATH or eject=True"),
    ({"iso": "/srv/iso/d.iso", "eject": True}, "give iso=PATH or eject=True"),
    ({"eject": "yes"}, "give iso=PATH or eject=True"),
])
def test_cdrom_refuses_before_recording_anything(pm, kwargs, message):
    saved = pm.registry_file()
    ret = peer.cdrom("vm1", **kwargs)
    assert ret["retcode"] == 1 and message in ret["error"]
    assert pm.registry_file() == saved
    assert "saltutil.refresh_pillar" not in {fun for _, fun in pm.functions()}


def test_an_iso_missing_on_the_peer_is_refused(pm):
    pm.files["hostB"] = set()
    ret = peer.cdrom("vm1", iso="/srv/iso/d.iso")
    assert "is not a file on hostB" in ret["error"]


def test_host_cdrom_starts_the_cd_of_a_vm_of_the_callers_pair_only(pm):
    caller("hostB")
    assert peer.host_cdrom("vm1", eject=True)["job"] == "ab" * 16
    assert job_of(pm) == ("hostB", "pairvm.cdrom", {"name": "vm1", "eject": True, "minion": "hostB"})
    pm.jobs.clear()
    assert peer.host_cdrom("vm9", eject=True)["error"] == "VM vm9 is not a VM of hostB's pair"
    caller("hostC")
    assert peer.host_cdrom("vm1", eject=True)["error"].startswith("hostC is not a host of a pair")
    assert pm.jobs == [] and pm.calls == []


def test_host_cdrom_passes_an_iso_and_test(pm):
    peer.host_cdrom("vm1", iso="/srv/iso/a b=c.iso", test=True)
    assert job_of(pm)[2] == {"name": "vm1", "iso": "/srv/iso/a b=c.iso", "minion": "hostA", "test": True}


# --- chkconfig ------------------------------------------------------------------------------------


def test_host_chkconfig_starts_the_verification_of_the_callers_pair(pm):
    assert peer.host_chkconfig("vm2")["job"] == "ab" * 16
    assert job_of(pm) == ("hostA", "pairvm.verify", {"minion": "hostA", "name": "vm2"})
    pm.jobs.clear()
    peer.host_chkconfig()
    assert job_of(pm) == ("hostA", "pairvm.verify", {"minion": "hostA"})
    pm.jobs.clear()
    caller("hostC")
    assert peer.host_chkconfig()["error"].startswith("hostC is not a host of a pair")
    assert pm.jobs == []


def test_host_job_reads_only_the_callers_jobs(pm, monkeypatch):
    asked = []
    monkeypatch.setattr(peer_jobs, "result",
                        lambda opts, who, token: asked.append((who, token)) or {"done": False})
    assert peer.host_job("cd" * 16) == {"done": False} and asked == [("hostA", "cd" * 16)]


# --- the ACL -----------------------------------------------------------------------------------------


def test_the_acl_lets_exactly_the_pair_hosts_run_exactly_the_host_functions(pm):
    acl = peer.peer_acl()["peer_run"]
    functions = [r"^pairvm\.host_create$", r"^pairvm\.host_cdrom$", r"^pairvm\.host_chkconfig$",
                 r"^pairvm\.host_swap$", r"^pairvm\.host_job$"]
    assert acl == {"^hostA$": functions, "^hostB$": functions}

    def allowed(minion, function):  # what salt.daemons.masterapi.RemoteFuncs.minion_runner does
        perms = [p for match, ps in acl.items() if re.match(match, minion) for p in ps]
        return any(re.match(p, function) for p in perms)

    assert allowed("hostA", "pairvm.host_create") and allowed("hostB", "pairvm.host_chkconfig")
    for minion, function in [("hostA2", "pairvm.host_create"), ("xhostA", "pairvm.host_create"),
                             ("hostA", "pairvm.host_createX"), ("hostA", "pairvm.destroy"),
                             ("hostA", "pairvm.create"), ("hostA", "pairvmXhost_create")]:
        assert not allowed(minion, function), (minion, function)


def test_peer_acl_writes_the_master_d_file_once(pm, tmp_path):
    ret = peer.peer_acl(write=True)
    path = tmp_path / "master.d" / peer_lib.CONFIG_NAME
    assert ret["path"] == str(path) and ret["changed"] and "restart the salt-master" in ret["comment"]
    assert yaml.safe_load(path.read_text()) == {"peer_run": ret["peer_run"]}
    assert path.read_text().startswith("# Managed by the pairvm formula")
    again = peer.peer_acl(write=True)
    assert not again["changed"] and again["comment"] == f"unchanged: {path}"


def test_the_acl_covers_every_pair_of_the_master(pm):
    pm.two()
    runner.allocate(pair="two")
    assert sorted(peer.peer_acl()["peer_run"]) == ["^hostA$", "^hostB$", "^hostC$", "^hostD$"]


def test_peer_acl_without_pair_hosts_says_so(pm, monkeypatch):
    monkeypatch.setattr(master_lib.Master, "pairs", lambda _, discover=False, errors=None: {})
    assert "no accepted minion is a host of a pair" in peer.peer_acl()["error"]


def test_host_swap_starts_the_swap_of_a_vm_of_the_callers_pair_only(pm):
    caller("hostB")
    assert peer.host_swap("vm1")["job"] == "ab" * 16
    assert job_of(pm) == ("hostB", "pairvm.swap", {"name": "vm1", "pair": "default"})
    pm.jobs.clear()
    assert peer.host_swap("vm9")["error"] == "VM vm9 is not a VM of hostB's pair"
    caller("hostC")
    assert peer.host_swap("vm1")["error"].startswith("hostC is not a host of a pair")
    assert pm.jobs == [] and pm.calls == []
