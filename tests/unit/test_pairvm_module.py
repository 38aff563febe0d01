"""_modules/pairvm.py with Salt's loader mocked: list and check_system."""

import json
from unittest import mock

import pytest

from salt.exceptions import CommandExecutionError
from tests.unit.conftest import load

pairvm = load("_modules/pairvm.py", "pairvm_module")

VGS = {"report": [{"vg": [
    {"vg_name": "here", "vg_size": "1020.00m", "vg_free": "1000.00m"},
    {"vg_name": "there", "vg_size": "1020.00m", "vg_free": "1020.00m"},
]}]}


class FakeDomain:
    def __init__(self, name):
        self._name = name

    def name(self):
        return self._name


@pytest.fixture
def machines(tmp_path, monkeypatch):
    monkeypatch.setattr(pairvm, "MACHINES_DIR", str(tmp_path))
    (tmp_path / "_global").write_text("me: hostA\npeer: hostB\nmemory_cap: 4096\n")
    (tmp_path / "vm1").write_text("home: hostA\nmemory: 256\ndisc: 1G\nmac: '52:54:00:00:00:01'\n")
    (tmp_path / "vm2").write_text("home: hostB\nmemory: 512\ndisc: 2G\n")
    return tmp_path


@pytest.fixture
def salt(loader_mock):
    funcs = {
        "config.get": lambda key, default=None: default,
        "cmd.run_all": mock.Mock(return_value={"retcode": 0, "stdout": json.dumps(VGS), "stderr": ""}),
        "drbd.status": mock.Mock(return_value={
            "vm1": {"connection": "Connected", "disk": "UpToDate"},
            "vm2": {"connection": "WFConnection", "disk": "UpToDate"},
        }),
    }
    loader_mock(pairvm, salt=funcs)
    return funcs


@pytest.fixture
def libvirt_running(monkeypatch):
    conn = mock.Mock()
    conn.listAllDomains.return_value = [FakeDomain("vm1")]
    monkeypatch.setattr(pairvm.libvirt, "open", mock.Mock(return_value=conn))
    return conn


def test_list_without_machines_asks_nothing_of_libvirt_or_drbd(salt, tmp_path, monkeypatch):
    monkeypatch.setattr(pairvm, "MACHINES_DIR", str(tmp_path / "absent"))
    with mock.patch.object(pairvm.libvirt, "open") as opened:
        result = pairvm.list_()
    assert result["vms"] == []
    opened.assert_not_called()
    salt["drbd.status"].assert_not_called()


def test_list_merges_config_libvirt_and_drbd_with_one_query_each(salt, machines, libvirt_running):
    result = pairvm.list_()
    assert [r["name"] for r in result["vms"]] == ["vm1", "vm2"]
    vm1, vm2 = result["vms"]
    assert (vm1["running"], vm1["location"], vm1["drbd_connection"]) == (True, "home", "Connected")
    assert (vm2["running"], vm2["location"], vm2["drbd_connection"]) == (False, "away", "WFConnection")
    assert result["memory"] == {"here": 256, "there": 512, "running": 256, "cap": 4096}
    libvirt_running.listAllDomains.assert_called_once()
    salt["drbd.status"].assert_called_once_with()


def test_list_fields_accepts_a_comma_list_and_keeps_name_first(salt, machines, libvirt_running):
    rows = pairvm.list_(fields="ip, memory")["vms"]
    assert list(rows[0]) == ["name", "ip", "memory"]


@pytest.mark.parametrize("fields", ["colour", "", ["ip", "x"]])
def test_list_rejects_unknown_fields_before_querying(salt, machines, fields):
    with mock.patch.object(pairvm.libvirt, "open") as opened:
        with pytest.raises(CommandExecutionError, match="unknown list field"):
            pairvm.list_(fields=fields)
    opened.assert_not_called()


def test_list_names_a_machines_file_that_is_not_a_mapping(salt, machines, libvirt_running):
    (machines / "vm3").write_text("- just\n- a list\n")
    with pytest.raises(CommandExecutionError, match="vm3 is not a mapping"):
        pairvm.list_()


def test_check_system_reports_each_check_and_sets_retcode(salt, monkeypatch, libvirt_running):
    monkeypatch.setattr(pairvm.salt.utils.path, "which", lambda tool: tool != "pv")
    monkeypatch.setattr(pairvm, "_check_bridge", lambda: (True, "bridge br0 is up"))
    libvirt_running.getLibVersion.return_value = 9000000
    report = pairvm.check_system()
    assert report["ok"] is False
    assert report["checks"]["tools"] == {"ok": False, "detail": "missing: pv"}
    assert report["checks"]["volume_groups"]["ok"] is True
    assert report["checks"]["libvirt"]["detail"] == "qemu:///system answers (libvirt 9.0.0)"
    assert pairvm.__context__["retcode"] == 1
    argv = salt["cmd.run_all"].call_args
    assert argv.args[0][0] == "vgs" and argv.kwargs["python_shell"] is False


def test_check_system_names_the_missing_volume_group(salt):
    only_here = {"report": [{"vg": VGS["report"][0]["vg"][:1]}]}
    salt["cmd.run_all"].return_value = {"retcode": 0, "stdout": json.dumps(only_here), "stderr": ""}
    assert pairvm._check_volume_groups() == (False, "missing volume group(s): there")


def test_virtual_explains_a_missing_libvirt_binding(monkeypatch):
    monkeypatch.setattr(pairvm, "HAS_LIBVIRT", False)
    ok, why = pairvm.__virtual__()
    assert ok is False and "libvirt-python" in why
