"""pairvm.facts with Salt's loader and libvirt mocked: one query of each kind, whatever the VM count."""

import hashlib
import json
from unittest import mock

import pytest

from tests.unit.conftest import load, real_utils

pairvm = load("_modules/pairvm.py", "pairvm_module_facts")
schema = load("_utils/pairvm_schema.py", "pairvm_schema")
alloc = load("_utils/pairvm_alloc.py", "pairvm_alloc")
render = load("_utils/pairvm_render.py", "pairvm_render")

PILLAR = {
    "pair": {
        "hostA": {"admin_ip": "10.77.0.11", "replication_ip": "10.78.0.11"},
        "hostB": {"admin_ip": "10.77.0.12", "replication_ip": "10.78.0.12"},
    },
    "pool": {"cidr": "10.79.0.0/24", "gateway": "10.79.0.1"},
    "domain_type": "qemu",
}
VGS = {"report": [{"vg": [
    {"vg_name": "here", "vg_size": "1020.00m", "vg_free": "1000.00m"},
    {"vg_name": "there", "vg_size": "1020.00m", "vg_free": "1020.00m"},
]}]}




class Domain:
    def __init__(self, host, name, xml):
        self.host, self._name, self.xml = host, name, xml

    def name(self):
        return self._name

    def XMLDesc(self, flags=0):  # noqa: N802 - libvirt's name
        self.host.xmldesc_calls.append(self._name)
        return self.xml


class Host:
    """hostA with ``count`` VMs (homes alternating), all running here, and its mocked queries."""

    def __init__(self, tmp_path, monkeypatch, loader_mock, count):
        self.machines, self.suppress = tmp_path / "machines", tmp_path / "suppressed"
        self.net = tmp_path / "net"
        for path in (self.machines, self.net):
            path.mkdir()
        monkeypatch.setattr(pairvm, "MACHINES_DIR", str(self.machines))
        monkeypatch.setattr(pairvm, "SUPPRESS_DIR", str(self.suppress))
        monkeypatch.setattr(pairvm, "SYS_CLASS_NET", str(self.net))
        self.bridge("br0", "up")
        (self.machines / "_global").write_text("me: hostA\npeer: hostB\n")
        pillar = {**PILLAR, "vms": {f"vm{i}": {"home": "hostA" if i % 2 else "hostB", "memory": 64,
                                               "disc": "16M"} for i in range(1, count + 1)}}
        settings, definitions = schema.settings(pillar), schema.vms(pillar)
        registry = alloc.allocate(settings, definitions, {"vms": {}})
        self.records, self.domains, self.xmldesc_calls = {}, [], []
        lvdisplay = {}
        for name, definition in definitions.items():
            record = schema.record(name, definition, registry["vms"][name]["alloc"], settings)
            self.records[name] = record
            (self.machines / name).write_text(schema.dump_record(record))
            vg = record["hosts"]["hostA"]["vg"]
            lvdisplay[f"/dev/{vg}/{name}"] = {"Logical Volume Size": str(16 * 2048)}
            self.domains.append(Domain(self, name, render.domain_xml(record)))
        self.domains.append(Domain(self, "not-pairvm", "<domain><name>not-pairvm</name></domain>"))
        self.conn = mock.Mock()
        self.conn.listAllDomains.side_effect = lambda flags: list(self.domains)
        self.open = mock.Mock(return_value=self.conn)
        monkeypatch.setattr(pairvm.libvirt, "open", self.open)
        self.missing_tools = set()
        monkeypatch.setattr(pairvm.salt.utils.path, "which",
                            lambda tool: None if tool in self.missing_tools else f"/usr/bin/{tool}")
        self.salt = {
            "config.get": mock.Mock(side_effect=lambda key, default=None: default),
            "drbd.status": mock.Mock(return_value={name: {"connection": "Connected", "disk": "UpToDate"}
                                                   for name in definitions}),
            "lvm.lvdisplay": mock.Mock(return_value=lvdisplay),
            "cmd.run_all": mock.Mock(return_value={"retcode": 0, "stdout": json.dumps(VGS), "stderr": ""}),
        }
        loader_mock(pairvm, salt=self.salt, grains={"id": "hostA"})
        pairvm.__utils__ = real_utils()

    def bridge(self, name, state):
        (self.net / name / "bridge").mkdir(parents=True)
        (self.net / name / "operstate").write_text(f"{state}\n")


@pytest.fixture
def host(tmp_path, monkeypatch, loader_mock):
    return Host(tmp_path, monkeypatch, loader_mock, 2)


def queries(host):
    return {
        "libvirt.open": host.open.call_count,
        "listAllDomains": host.conn.listAllDomains.call_count,
        "drbd.status": host.salt["drbd.status"].call_count,
        "lvm.lvdisplay": host.salt["lvm.lvdisplay"].call_count,
        "vgs": host.salt["cmd.run_all"].call_count,
    }


@pytest.mark.parametrize("count", [1, 50])
def test_facts_asks_each_thing_once_whatever_the_number_of_vms(tmp_path, monkeypatch, loader_mock, count):
    host = Host(tmp_path, monkeypatch, loader_mock, count)
    facts = pairvm.facts()
    assert queries(host) == {"libvirt.open": 1, "listAllDomains": 1, "drbd.status": 1, "lvm.lvdisplay": 1,
                             "vgs": 1}
    assert len(facts["machines"]) == count
    # XMLDesc is a libvirt call, not a process: once per running pairvm domain, never for others
    assert sorted(host.xmldesc_calls) == sorted(host.records)
    host.salt["drbd.status"].assert_called_once_with()
    host.salt["lvm.lvdisplay"].assert_called_once_with(quiet=True)
    argv = host.salt["cmd.run_all"].call_args
    assert argv.args[0][0] == "vgs" and argv.kwargs["python_shell"] is False
    host.conn.close.assert_called_once()


def test_facts_returns_plain_data_verify_can_compare(host):
    facts = pairvm.facts()
    text = (host.machines / "vm1").read_bytes()
    assert facts["host"] == "hostA"
    assert facts["machines"]["vm1"] == {
        "digest": hashlib.sha256(text).hexdigest(), "home": "hostA", "peer": "hostB", "memory": 64,
        "state": "running", "suppress": False, "bridge": "br0", "vnc_display": 1, "vg": "here",
    }
    assert facts["machines"]["vm2"]["vg"] == "there"
    assert facts["running"] == ["not-pairvm", "vm1", "vm2"]
    assert facts["vnc"] == {"vm1": "127.0.0.1", "vm2": "127.0.0.1"}
    assert facts["drbd"]["vm1"] == {"connection": "Connected", "disk": "UpToDate"}
    assert facts["lvs"] == {"here/vm1": 16, "there/vm2": 16}
    assert facts["volume_groups"] == {"here": {"size": "1020.00m", "free": "1000.00m"},
                                      "there": {"size": "1020.00m", "free": "1020.00m"}}
    assert facts["tools_missing"] == []
    assert facts["bridges"] == {"br0": {"present": True, "state": "up"}}
    assert facts["suppressed"] == [] and facts["errors"] == {}
    assert json.loads(json.dumps(facts)) == facts


def test_the_digest_is_that_of_the_file_bytes_so_an_edit_shows(host):
    before = pairvm.facts()["machines"]["vm1"]["digest"]
    with open(host.machines / "vm1", "a") as fh:
        fh.write("# edited\n")
    pairvm.__context__ = {}
    assert pairvm.facts()["machines"]["vm1"]["digest"] != before


def test_facts_reads_the_vnc_listen_address_of_the_running_domains(host):
    host.domains[0].xml = host.domains[0].xml.replace("127.0.0.1", "0.0.0.0")
    assert pairvm.facts()["vnc"] == {"vm1": "0.0.0.0", "vm2": "127.0.0.1"}


def test_a_stopped_domain_is_neither_running_nor_asked_for_its_xml(host):
    host.domains = [d for d in host.domains if d.name() != "vm2"]
    facts = pairvm.facts()
    assert facts["running"] == ["not-pairvm", "vm1"] and facts["vnc"] == {"vm1": "127.0.0.1"}
    assert host.xmldesc_calls == ["vm1"]


def test_a_domain_that_stops_while_asked_is_skipped(host):
    def gone(flags=0):
        raise pairvm.libvirt.libvirtError("Domain not found")

    host.domains[1].XMLDesc = gone
    facts = pairvm.facts()
    assert facts["vnc"] == {"vm1": "127.0.0.1"} and facts["errors"] == {}


def test_missing_tools_and_the_suppressed_vms(host):
    host.missing_tools = {"pv", "socat"}
    host.suppress.mkdir()
    (host.suppress / "vm2").write_text("")
    facts = pairvm.facts()
    assert facts["tools_missing"] == ["socat", "pv"]
    assert facts["suppressed"] == ["vm2"]


def test_facts_checks_the_default_the_vms_and_the_given_bridges(host):
    host.bridge("br1", "down")
    (host.machines / "vm2").write_text((host.machines / "vm2").read_text().replace('"br0"', '"br2"'))
    facts = pairvm.facts(bridges="br1,br3")
    assert facts["bridges"] == {
        "br0": {"present": True, "state": "up"}, "br1": {"present": True, "state": "down"},
        "br2": {"present": False, "state": None}, "br3": {"present": False, "state": None},
    }
    assert pairvm.facts(bridges=["br1"])["bridges"]["br1"]["present"] is True


@pytest.mark.parametrize("bad", ["../net/br0", "br0/../br0", "-x", ".", "a" * 16, "br 0"])
def test_a_bridge_name_is_never_a_path(host, bad):
    bridges = pairvm.facts(bridges=[bad])["bridges"]
    assert all(b == "br0" or not v["present"] for b, v in bridges.items())


def test_a_failing_query_is_named_and_the_others_still_answer(host):
    host.salt["drbd.status"].side_effect = pairvm.CommandExecutionError(
        "'drbdsetup events2 --now all' failed with exit code 20: no kernel module")
    host.salt["cmd.run_all"].return_value = {"retcode": 5, "stdout": "", "stderr": "  No volume groups\n"}
    host.open.side_effect = pairvm.libvirt.libvirtError("Failed to connect socket")
    facts = pairvm.facts()
    assert facts["errors"] == {
        "drbd": "'drbdsetup events2 --now all' failed with exit code 20: no kernel module",
        "volume_groups": "vgs failed: No volume groups",
        "libvirt": "cannot reach libvirt at qemu:///system: Failed to connect socket",
    }
    assert facts["drbd"] == {} and facts["running"] == [] and facts["volume_groups"] == {}
    assert facts["lvs"] == {"here/vm1": 16, "there/vm2": 16}
    assert len(facts["machines"]) == 2


def test_without_the_drbd_module_facts_says_so(host):
    del host.salt["drbd.status"]
    assert "drbd execution module is not available" in pairvm.facts()["errors"]["drbd"]


def test_a_broken_machines_file_keeps_its_digest_and_says_why(host):
    (host.machines / "vm3").write_text("- a\n- list\n")
    (host.machines / "vm4").write_text("key: [unclosed\n")
    machines = pairvm.facts()["machines"]
    assert machines["vm3"]["error"] == "not a mapping of VM settings"
    assert machines["vm4"]["error"].startswith("not valid YAML")
    assert machines["vm3"]["digest"] == hashlib.sha256(b"- a\n- list\n").hexdigest()


def test_facts_without_machines_still_describes_the_host(host):
    for path in host.machines.iterdir():
        path.unlink()
    host.machines.rmdir()
    facts = pairvm.facts()
    assert facts["machines"] == {} and facts["vnc"] == {} and host.xmldesc_calls == []
    assert facts["volume_groups"] and facts["bridges"]["br0"]["present"]


def test_facts_changes_nothing(host):
    before = {p.name: p.read_bytes() for p in host.machines.iterdir()}
    pairvm.facts()
    assert {p.name: p.read_bytes() for p in host.machines.iterdir()} == before
    assert not host.suppress.exists()
    for method in ("defineXML", "createXML", "lookupByName"):
        getattr(host.conn, method).assert_not_called()
