"""_runners/pairvm_peer.py with the master mocked (the fake master of test_pairvm.py): what a
pair host runs on the master through publish.runner, the CD recorded on both hosts, the ACL.

``__opts__["id"]`` is the caller, as the master sets it for a peer runner call.
"""

import re

import pytest
import yaml

import salt.config.worker_pools as salt_pools
from pairvmlib import master as master_lib
from pairvmlib import peer as peer_lib
from tests.unit.conftest import load
from tests.unit.runners.test_pairvm import Master, registry_pillar, runner

peer = load("_runners/pairvm_peer.py", "pairvm_peer_runner")


class PeerMaster(Master):
    """The fake master, with the registry's recorded CDs in the compiled pillar, and the
    hosts' pairvm.cdrom and file.file_exists."""

    def __init__(self, tmp_path, monkeypatch, loader_mock):
        super().__init__(tmp_path, monkeypatch, loader_mock)
        self.opts = runner.__opts__
        loader_mock(peer, salt={"pairvm.create": runner.create, "pairvm.verify": runner.verify},
                    opts={**self.opts, "id": "hostA"})
        monkeypatch.setattr(master_lib.Master, "pillar", lambda _, minion=None: self.pillar_of(minion))
        monkeypatch.setattr(master_lib.Master, "pair_hosts_everywhere", lambda _: ["hostA", "hostB"])
        self.files = {"hostA": {"/srv/iso/d.iso"}, "hostB": {"/srv/iso/d.iso"}}
        self.running = {"hostA": False, "hostB": False}
        self.handlers.update({
            "file.file_exists": lambda minion, path: path in self.files[minion],
            "pairvm.cdrom": self._cdrom,
            "pairvm.create": self._create,
        })

    def pillar_of(self, minion):
        if minion not in (None, "hostA", "hostB"):
            raise master_lib.Failed(f"no pillar pairvm:pair for {minion}")
        return self.compiled_pillar(minion)

    def compiled_pillar(self, minion=None):
        pairvm = super().compiled_pillar(minion)
        ext = registry_pillar.ext_pillar(minion or "hostA", {"pairvm": pairvm})
        if ext:
            pairvm["cdroms"] = ext["pairvm"]["cdroms"]
        return pairvm

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


@pytest.mark.parametrize("who, where, home", [("hostA", "here", "hostA"), ("hostA", "there", "hostB"),
                                              ("hostB", "here", "hostB"), ("hostB", "there", "hostA")])
def test_host_create_makes_the_caller_or_its_peer_the_home(pm, who, where, home):
    caller(who)
    ret = peer.host_create("web", where, 512, "2G")
    assert ret["home"] == home and pm.load_registry()["vms"]["web"]["definition"]["home"] == home
    assert (ret["ip"], ret["mac"], ret["vnc_display"]) == ("10.79.0.7", "52:54:00:00:00:03", 3)
    assert [c for c in pm.functions() if c[1] == "pairvm.create"] == [
        (h, "pairvm.create") for h in (({"hostA", "hostB"} - {home}).pop(), home)]


@pytest.mark.parametrize("who", ["hostC", "saltmaster_master", "hostA2"])
def test_only_a_host_of_a_pair_may_create_and_nothing_changes_else(pm, who):
    caller(who)
    saved = pm.registry_file()
    ret = peer.host_create("web", "here", 512, "2G")
    assert ret["retcode"] == 1 and ret["error"].startswith(f"{who} is not a host of a pair")
    assert "salt-run pairvm.create" in ret["error"]
    assert pm.calls == [] and pm.registry_file() == saved


def test_the_same_create_again_reports_the_vm_once_drbd_is_connected_on_both(pm):
    first = peer.host_create("web", "here", 512, "2G", ip="10.79.0.50")
    pm.calls.clear()
    pm.connect_after = 0  # connected on both, as after the first create
    again = peer.host_create("web", "here", 512, "2G", ip="10.79.0.50")
    assert again["comment"] == "VM web exists already, as asked"
    assert pm.functions() == [("hostA", "drbd.status"), ("hostB", "drbd.status")]
    assert (again["ip"], again["vnc_display"]) == (first["ip"], first["vnc_display"]) == ("10.79.0.50", 3)
    other = peer.host_create("web", "here", 1024, "2G")
    assert other["retcode"] == 1 and "VM web already exists" in other["error"]


def test_the_same_create_while_the_first_is_under_way_says_so(pm):
    peer.host_create("web", "here", 512, "2G")
    pm.connect_after = None  # DRBD never connects: the first create is still at work, or failed
    again = peer.host_create("web", "here", 512, "2G")
    assert again["retcode"] == 1 and again["error"].startswith(
        "VM web is registered with these values, but its DRBD resource is Connecting on hostA, "
        "Connecting on hostB: a create of it may still be under way")


def test_host_create_refuses_a_where_of_neither_here_nor_there(pm):
    ret = peer.host_create("web", "hostB", 512, "2G")
    assert ret["error"] == "where must be here or there, got 'hostB'" and pm.calls == []


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


def test_host_cdrom_is_for_the_vms_of_the_callers_pair_only(pm):
    caller("hostB")
    assert peer.host_cdrom("vm1", eject=True)["comment"] == "VM vm1's CD is empty on both hosts"
    pm.calls.clear()
    assert peer.host_cdrom("vm9", eject=True)["error"] == "VM vm9 is not a VM of hostB's pair"
    caller("hostC")
    assert peer.host_cdrom("vm1", eject=True)["error"].startswith("hostC is not a host of a pair")
    assert pm.calls == []


# --- chkconfig ------------------------------------------------------------------------------------


def finding(severity, code, vm):
    return {"severity": severity, "code": code, "vm": vm, "host": "hostB", "message": "m"}


def test_host_chkconfig_is_the_pair_verification_of_one_vm_or_all(pm):
    found = [finding("ERROR", "EMACHINESDIFF", "vm1"), finding("WARNING", "EVMNOTRUNNING", "vm2")]
    peer.__salt__["pairvm.verify"] = lambda minion: {"findings": found if minion == "hostA" else [],
                                                     "retcode": 1}
    ret = peer.host_chkconfig("vm2")
    assert ret["lines"] == ["WARNING EVMNOTRUNNING vm2@hostB: m"] and ret["retcode"] == 0
    ret = peer.host_chkconfig()
    assert len(ret["lines"]) == 2 and ret["retcode"] == 1 and ret["summary"] == "1 error, 1 warning"
    caller("hostC")
    assert peer.host_chkconfig()["error"].startswith("hostC is not a host of a pair")


# --- the ACL -----------------------------------------------------------------------------------------


def test_the_acl_lets_exactly_the_pair_hosts_run_exactly_the_host_functions(pm):
    wanted = peer.peer_acl()
    acl = wanted["peer_run"]
    functions = [r"^pairvm\.host_create$", r"^pairvm\.host_cdrom$", r"^pairvm\.host_chkconfig$"]
    assert acl == {"^hostA$": functions, "^hostB$": functions}

    def allowed(minion, function):  # what salt.daemons.masterapi.RemoteFuncs.minion_runner does
        perms = [p for match, ps in acl.items() if re.match(match, minion) for p in ps]
        return any(re.match(p, function) for p in perms)

    assert allowed("hostA", "pairvm.host_create") and allowed("hostB", "pairvm.host_chkconfig")
    for minion, function in [("hostA2", "pairvm.host_create"), ("xhostA", "pairvm.host_create"),
                             ("hostA", "pairvm.host_createX"), ("hostA", "pairvm.destroy"),
                             ("hostA", "pairvm.create"), ("hostA", "pairvmXhost_create")]:
        assert not allowed(minion, function), (minion, function)
    # the peer runner calls in a worker pool of their own, the master's own pools kept
    assert wanted["worker_pools"]["pairvm_peer"] == {"worker_count": 2, "commands": ["minion_runner"]}
    assert salt_pools.validate_worker_pools_config({"worker_pools": wanted["worker_pools"]})
    assert {k: v for k, v in wanted["worker_pools"].items() if k != "pairvm_peer"} == \
        salt_pools.get_worker_pools_config(peer.__opts__)


def test_worker_pools_keep_a_pool_the_operator_gave_the_peer_runner_calls():
    own = {"slow": {"worker_count": 3, "commands": ["minion_runner", "_pillar"]},
           "default": {"worker_count": 9, "commands": ["*"]}}
    assert peer_lib.worker_pools(own) == own
    assert "worker_pools" not in peer_lib.settings(["hostA"], None)  # pooling off: left so


def test_peer_acl_writes_the_master_d_file_once(pm, tmp_path):
    ret = peer.peer_acl(write=True)
    path = tmp_path / "master.d" / peer_lib.CONFIG_NAME
    assert ret["path"] == str(path) and ret["changed"] and "restart the salt-master" in ret["comment"]
    assert yaml.safe_load(path.read_text()) == {key: ret[key] for key in ("peer_run", "worker_pools")}
    assert path.read_text().startswith("# Managed by the pairvm formula")
    again = peer.peer_acl(write=True)
    assert not again["changed"] and again["comment"] == f"unchanged: {path}"


def test_peer_acl_without_pair_hosts_says_so(pm, monkeypatch):
    monkeypatch.setattr(master_lib.Master, "pair_hosts_everywhere", lambda _: [])
    assert "no accepted minion is a host of a pair" in peer.peer_acl()["error"]
