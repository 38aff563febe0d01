"""_modules/pairvm_health.py: list, check_system and facts, with Salt's loader and libvirt mocked."""

import hashlib
import json
from unittest import mock

import libvirt
import pytest

from pairvmlib import alloc, layout, render, schema
from salt.exceptions import CommandExecutionError
from tests.unit.fakehost import MODULES, LibvirtDomain, drbd_state

pairvm = MODULES["pairvm_health"]

FACTS_PILLAR = {
    "pair": {
        "hostA": {"admin_ip": "10.77.0.11", "replication_ip": "10.78.0.11"},
        "hostB": {"admin_ip": "10.77.0.12", "replication_ip": "10.78.0.12"},
    },
    "pool": {"cidr": "10.79.0.0/24", "gateway": "10.79.0.1"},
    "domain_type": "qemu",
}
VGS = {"report": [{"vg": [
    {"vg_name": "here", "vg_size": "1020.00m", "vg_free": "1000.00m", "vg_extent_size": "4.00m"},
    {"vg_name": "there", "vg_size": "1020.00m", "vg_free": "1020.00m", "vg_extent_size": "0.50m"},
]}]}




class Domain:
    def __init__(self, host, name, xml):
        self.host, self._name, self.xml = host, name, xml

    def name(self):
        return self._name

    def XMLDesc(self, flags=0):  # noqa: N802 - libvirt's name
        self.host.xmldesc_calls.append(self._name)
        return self.xml


class FactsHost:
    """hostA with ``count`` VMs (homes alternating), all running here, and its mocked queries."""

    def __init__(self, tmp_path, monkeypatch, loader_mock, count):
        self.machines, self.suppress = tmp_path / "machines", tmp_path / "suppressed"
        self.net = tmp_path / "net"
        for path in (self.machines, self.net):
            path.mkdir()
        monkeypatch.setattr(layout, "MACHINES_DIR", str(self.machines))
        monkeypatch.setattr(layout, "SUPPRESS_DIR", str(self.suppress))
        monkeypatch.setattr(pairvm, "SYS_CLASS_NET", str(self.net))
        self.bridge("br0", "up")
        (self.machines / "_global").write_text(json.dumps({"me": "hostA", "peer": "hostB"}))
        pillar = {**FACTS_PILLAR, "vms": {f"vm{i}": {"home": "hostA" if i % 2 else "hostB", "memory": 64,
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
        monkeypatch.setattr(libvirt, "open", self.open)
        self.missing_tools = set()
        monkeypatch.setattr(pairvm.salt.utils.path, "which",
                            lambda tool: None if tool in self.missing_tools else f"/usr/bin/{tool}")
        self.salt = {
            "config.get": mock.Mock(side_effect=lambda key, default=None: default),
            "drbd.status": mock.Mock(return_value={name: {"connection": "Connected", "disk": "UpToDate"}
                                                   for name in definitions}),
            "lvm.lvdisplay": mock.Mock(return_value=lvdisplay),
            "cmd.run_all": mock.Mock(return_value={"retcode": 0, "stdout": json.dumps(VGS), "stderr": ""}),
            # drbdsetup show all: every resource connects to its peer, vm2 without authentication
            "drbd.show": mock.Mock(return_value="".join(
                f"resource {name} {{\n    net {{\n"
                + ("" if name == "vm2" else "        cram-hmac-alg sha1;\n        shared-secret \"s\";\n")
                + "    }\n    _remote_host {\n        address ipv4 10.78.0.12:7790;\n    }\n}\n"
                for name in definitions)),
        }
        loader_mock(pairvm, salt=self.salt, grains={"id": "hostA"})
        pairvm.__pillar__ = {}

    def bridge(self, name, state):
        (self.net / name / "bridge").mkdir(parents=True)
        (self.net / name / "operstate").write_text(f"{state}\n")
        (self.net / name / "flags").write_text("0x1003\n" if state == "up" else "0x1002\n")


@pytest.fixture
def facts_host(tmp_path, monkeypatch, loader_mock):
    return FactsHost(tmp_path, monkeypatch, loader_mock, 2)


def queries(host):
    return {
        "libvirt.open": host.open.call_count,
        "listAllDomains": host.conn.listAllDomains.call_count,
        "drbd.status": host.salt["drbd.status"].call_count,
        "drbd.show": host.salt["drbd.show"].call_count,
        "lvm.lvdisplay": host.salt["lvm.lvdisplay"].call_count,
        "vgs": host.salt["cmd.run_all"].call_count,
    }


@pytest.mark.parametrize("count", [1, 50])
def test_facts_asks_each_thing_once_whatever_the_number_of_vms(tmp_path, monkeypatch, loader_mock, count):
    host = FactsHost(tmp_path, monkeypatch, loader_mock, count)
    facts = pairvm.facts()
    assert queries(host) == {"libvirt.open": 1, "listAllDomains": 1, "drbd.status": 1, "drbd.show": 1,
                             "lvm.lvdisplay": 1, "vgs": 1}
    host.salt["drbd.show"].assert_called_once_with("all")
    assert len(facts["machines"]) == count
    # XMLDesc is a libvirt call, not a process: once per running pairvm domain, never for others
    assert sorted(host.xmldesc_calls) == sorted(host.records)
    host.salt["drbd.status"].assert_called_once_with()
    host.salt["lvm.lvdisplay"].assert_called_once_with(quiet=True)
    argv = host.salt["cmd.run_all"].call_args
    assert argv.args[0][0] == "vgs" and argv.kwargs["python_shell"] is False
    host.conn.close.assert_called_once()


def test_facts_returns_plain_data_verify_can_compare(facts_host):
    host = facts_host
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
    assert facts["drbd_auth"] == {"vm1": True, "vm2": False}
    assert facts["lvs"] == {"here/vm1": 16, "there/vm2": 16}
    assert facts["volume_groups"] == {"here": {"size": "1020.00m", "free": "1000.00m", "extent_mib": 4},
                                      "there": {"size": "1020.00m", "free": "1020.00m", "extent_mib": 1}}
    assert facts["tools_missing"] == []
    assert facts["bridges"] == {"br0": {"present": True, "state": "up"}}
    assert facts["suppressed"] == [] and facts["errors"] == {}
    assert json.loads(json.dumps(facts)) == facts


def test_the_digest_is_that_of_the_file_bytes_so_an_edit_shows(facts_host):
    host = facts_host
    before = pairvm.facts()["machines"]["vm1"]["digest"]
    with open(host.machines / "vm1", "a") as fh:
        fh.write("# edited\n")
    pairvm.__context__ = {}
    assert pairvm.facts()["machines"]["vm1"]["digest"] != before


def test_facts_reads_the_vnc_listen_address_of_the_running_domains(facts_host):
    host = facts_host
    host.domains[0].xml = host.domains[0].xml.replace("127.0.0.1", "0.0.0.0")
    assert pairvm.facts()["vnc"] == {"vm1": "0.0.0.0", "vm2": "127.0.0.1"}


def test_a_stopped_domain_is_neither_running_nor_asked_for_its_xml(facts_host):
    host = facts_host
    host.domains = [d for d in host.domains if d.name() != "vm2"]
    facts = pairvm.facts()
    assert facts["running"] == ["not-pairvm", "vm1"] and facts["vnc"] == {"vm1": "127.0.0.1"}
    assert host.xmldesc_calls == ["vm1"]


def test_a_domain_that_stops_while_asked_is_skipped(facts_host):
    host = facts_host
    def gone(flags=0):
        raise libvirt.libvirtError("Domain not found")

    host.domains[1].XMLDesc = gone
    facts = pairvm.facts()
    assert facts["vnc"] == {"vm1": "127.0.0.1"} and facts["errors"] == {}


def test_missing_tools_and_the_suppressed_vms(facts_host):
    host = facts_host
    host.missing_tools = {"pv", "socat"}
    host.suppress.mkdir()
    (host.suppress / "vm2").write_text("")
    facts = pairvm.facts()
    assert facts["tools_missing"] == ["socat", "pv"]
    assert facts["suppressed"] == ["vm2"]


def test_facts_checks_the_default_the_vms_and_the_given_bridges(facts_host):
    host = facts_host
    host.bridge("br1", "down")
    (host.machines / "vm2").write_text((host.machines / "vm2").read_text().replace('"br0"', '"br2"'))
    facts = pairvm.facts(bridges="br1,br3")
    assert facts["bridges"] == {
        "br0": {"present": True, "state": "up"}, "br1": {"present": True, "state": "down"},
        "br2": {"present": False, "state": None}, "br3": {"present": False, "state": None},
    }
    assert pairvm.facts(bridges=["br1"])["bridges"]["br1"]["present"] is True


@pytest.mark.parametrize("bad", ["../net/br0", "br0/../br0", "-x", ".", "a" * 16, "br 0"])
def test_a_bridge_name_is_never_a_path(facts_host, bad):
    bridges = pairvm.facts(bridges=[bad])["bridges"]
    assert all(b == "br0" or not v["present"] for b, v in bridges.items())


def test_a_failing_query_is_named_and_the_others_still_answer(facts_host):
    host = facts_host
    host.salt["drbd.status"].side_effect = CommandExecutionError(
        "'drbdsetup events2 --now all' failed with exit code 20: no kernel module")
    host.salt["cmd.run_all"].return_value = {"retcode": 5, "stdout": "", "stderr": "  No volume groups\n"}
    host.open.side_effect = libvirt.libvirtError("Failed to connect socket")
    facts = pairvm.facts()
    assert facts["errors"] == {
        "drbd": "'drbdsetup events2 --now all' failed with exit code 20: no kernel module",
        "volume_groups": "vgs failed: No volume groups",
        "libvirt": "cannot reach libvirt at qemu:///system: Failed to connect socket",
    }
    assert facts["drbd"] == {} and facts["running"] == [] and facts["volume_groups"] == {}
    assert facts["lvs"] == {"here/vm1": 16, "there/vm2": 16}
    assert len(facts["machines"]) == 2


def test_without_the_drbd_module_facts_says_so(facts_host):
    host = facts_host
    del host.salt["drbd.status"]
    assert "drbd execution module is not available" in pairvm.facts()["errors"]["drbd"]


def test_a_broken_machines_file_keeps_its_digest_and_says_why(facts_host):
    host = facts_host
    (host.machines / "vm3").write_text("- a\n- list\n")
    (host.machines / "vm4").write_text("key: [unclosed\n")
    machines = pairvm.facts()["machines"]
    assert machines["vm3"]["error"] == "not a mapping of VM settings"
    assert machines["vm4"]["error"].startswith("not valid YAML")
    assert machines["vm3"]["digest"] == hashlib.sha256(b"- a\n- list\n").hexdigest()


def test_facts_without_machines_still_describes_the_host(facts_host):
    host = facts_host
    for path in host.machines.iterdir():
        path.unlink()
    host.machines.rmdir()
    facts = pairvm.facts()
    assert facts["machines"] == {} and facts["vnc"] == {} and host.xmldesc_calls == []
    assert facts["volume_groups"] and facts["bridges"]["br0"]["present"]


def test_facts_changes_nothing(facts_host):
    host = facts_host
    before = {p.name: p.read_bytes() for p in host.machines.iterdir()}
    pairvm.facts()
    assert {p.name: p.read_bytes() for p in host.machines.iterdir()} == before
    assert not host.suppress.exists()
    for method in ("defineXML", "createXML", "lookupByName"):
        getattr(host.conn, method).assert_not_called()


# --- list and check_system against a plain host ------------------------------------------------


class FakeDomain:
    def __init__(self, name):
        self._name = name

    def name(self):
        return self._name


@pytest.fixture
def machines(tmp_path, monkeypatch):
    monkeypatch.setattr(layout, "MACHINES_DIR", str(tmp_path))
    (tmp_path / "_global").write_text(json.dumps({"me": "hostA", "peer": "hostB", "memory_cap": 4096}))
    (tmp_path / "vm1").write_text("home: hostA\nmemory: 256\ndisc: 1G\nmac: '52:54:00:00:00:01'\n")
    (tmp_path / "vm2").write_text("home: hostB\nmemory: 512\ndisc: 2G\n")
    return tmp_path


ADDRESSES = [{"ifname": "eth0", "addr_info": [{"local": "10.77.0.11"}]},
             {"ifname": "eth1", "addr_info": [{"local": "10.78.0.11"}]}]
VIEW = {"me": "hostA", "peer": "hostB", "here_ip": "10.77.0.11", "there_ip": "10.77.0.12",
        "here_replication_ip": "10.78.0.11", "there_replication_ip": "10.78.0.12", "bridge": "br0",
        "volume_groups": ["here", "there"], "libvirt_uri": "qemu:///system"}


class Commands:
    """cmd.run_all of a healthy hostA: vgs, ip -j addr and ping answer; ``answers`` overrides one."""

    def __init__(self):
        self.answers, self.argvs = {}, []

    def __call__(self, argv, **kwargs):
        self.argvs.append(argv)
        assert kwargs["python_shell"] is False
        default = {"vgs": json.dumps(VGS), "ip": json.dumps(ADDRESSES), "ping": ""}[argv[0]]
        rc, out, err = self.answers.get(argv[0], (0, default, ""))
        return {"retcode": rc, "stdout": out, "stderr": err}


@pytest.fixture
def salt(loader_mock):
    funcs = {
        "config.get": lambda key, default=None: default,
        "cmd.run_all": Commands(),
        "drbd.status": mock.Mock(return_value={
            "vm1": {"connection": "Connected", "disk": "UpToDate"},
            "vm2": {"connection": "WFConnection", "disk": "UpToDate"},
        }),
    }
    loader_mock(pairvm, salt=funcs)
    pairvm.__pillar__ = {}
    return funcs


@pytest.fixture
def libvirt_running(monkeypatch):
    conn = mock.Mock()
    conn.listAllDomains.return_value = [FakeDomain("vm1")]
    monkeypatch.setattr(libvirt, "open", mock.Mock(return_value=conn))
    return conn


def test_list_without_machines_asks_nothing_of_libvirt_or_drbd(salt, tmp_path, monkeypatch):
    monkeypatch.setattr(layout, "MACHINES_DIR", str(tmp_path / "absent"))
    with mock.patch.object(libvirt, "open") as opened:
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
    with mock.patch.object(libvirt, "open") as opened:
        with pytest.raises(CommandExecutionError, match="unknown list field"):
            pairvm.list_(fields=fields)
    opened.assert_not_called()


def test_list_names_a_machines_file_that_is_not_a_mapping(salt, machines, libvirt_running):
    (machines / "vm3").write_text("- just\n- a list\n")
    with pytest.raises(CommandExecutionError, match="vm3 is not a mapping"):
        pairvm.list_()


@pytest.fixture
def healthy(salt, machines, libvirt_running, monkeypatch, tmp_path):
    """hostA as the state pairvm.host leaves it: its view, tools, addresses, VGs, br0 up, libvirt."""
    (machines / "_global").write_text(json.dumps(VIEW))
    net = tmp_path / "net"
    (net / "br0" / "bridge").mkdir(parents=True)
    (net / "br0" / "operstate").write_text("up\n")
    (net / "br0" / "flags").write_text("0x1003\n")
    monkeypatch.setattr(pairvm, "SYS_CLASS_NET", str(net))
    monkeypatch.setattr(pairvm.salt.utils.path, "which", lambda tool: f"/usr/bin/{tool}")
    libvirt_running.getLibVersion.return_value = 9000000
    return net


def test_check_system_passes_a_healthy_host_and_reads_its_view(salt, healthy):
    report = pairvm.check_system()
    assert report["ok"] is True, report
    assert list(report["checks"]) == ["host", "tools", "addresses", "volume_groups", "bridge", "libvirt",
                                      "peer"]
    assert report["checks"]["host"]["detail"] == "this host is hostA, its peer hostB"
    assert report["checks"]["addresses"]["detail"] == "10.77.0.11 on eth0, 10.78.0.11 on eth1"
    assert report["checks"]["libvirt"]["detail"] == "qemu:///system answers (libvirt 9.0.0)"
    pings = [argv for argv in salt["cmd.run_all"].argvs if argv[0] == "ping"]
    assert [argv[-1] for argv in pings] == ["10.77.0.12", "10.78.0.12"]
    assert "retcode" not in pairvm.__context__


def test_check_system_reports_each_failure_and_sets_retcode(salt, healthy, monkeypatch):
    monkeypatch.setattr(pairvm.salt.utils.path, "which", lambda tool: None if tool == "pv" else tool)
    salt["cmd.run_all"].answers["ping"] = (1, "", "")
    (healthy / "br0" / "flags").write_text("0x1002\n")
    report = pairvm.check_system()
    assert report["ok"] is False
    assert report["checks"]["tools"] == {"ok": False, "detail": "missing: pv"}
    assert report["checks"]["bridge"] == {"ok": False, "detail": "bridge br0 is down (ip link set br0 up)"}
    assert report["checks"]["peer"]["ok"] is False
    assert report["checks"]["volume_groups"]["ok"] is True
    assert pairvm.__context__["retcode"] == 1


def test_check_system_checks_the_bridge_and_vgs_the_view_names(salt, healthy, machines):
    """Not br0 and here/there: what pillar set (through /machines/_global), under salt-call --local."""
    (machines / "_global").write_text(json.dumps(dict(VIEW, bridge="vmbr7", volume_groups=["fast", "slow"])))
    report = pairvm.check_system()
    assert report["checks"]["bridge"]["detail"] == "bridge vmbr7 does not exist (or is no bridge)"
    assert report["checks"]["volume_groups"]["detail"].startswith("missing volume group(s): fast, slow")


def test_check_system_without_a_view_says_to_apply_the_state(salt, healthy, machines):
    (machines / "_global").unlink()
    report = pairvm.check_system()
    assert report["checks"]["host"]["ok"] is False
    assert "state.apply pairvm.host" in report["checks"]["host"]["detail"]
    assert report["checks"]["addresses"]["ok"] is False


def test_check_system_names_the_missing_volume_group(salt, healthy):
    only_here = {"report": [{"vg": VGS["report"][0]["vg"][:1]}]}
    salt["cmd.run_all"].answers["vgs"] = (0, json.dumps(only_here), "")
    detail = pairvm.check_system()["checks"]["volume_groups"]["detail"]
    assert detail.startswith("missing volume group(s): there")


def test_check_system_names_an_address_that_is_not_this_hosts(salt, healthy):
    salt["cmd.run_all"].answers["ip"] = (0, json.dumps(ADDRESSES[:1]), "")
    detail = pairvm.check_system()["checks"]["addresses"]["detail"]
    assert detail == "not an address of this host (ip addr): 10.78.0.11 (here_replication_ip)"


def test_virtual_explains_a_missing_libvirt_binding(monkeypatch):
    monkeypatch.setattr(pairvm.boundary, "HAS_LIBVIRT", False)
    ok, why = pairvm.__virtual__()
    assert ok is False and "libvirt-python" in why


# --- list: one query of each runtime, however many VMs ------------------------------------------


@pytest.mark.parametrize("count", [1, 50])
def test_list_queries_the_runtime_once_whatever_the_number_of_vms(host, count):
    template = host.record("vm1")
    for i in range(1, count + 1):
        name = f"vm{i}"
        (host.machines / name).write_text(schema.dump_record({**template, "name": name}))
        host.drbd[name] = drbd_state(role="Primary" if i % 2 else "Secondary")
        if i % 2:
            host.domains[name] = LibvirtDomain(host, name, "<domain/>")
            host.domains[name].active = True
    rows = pairvm.list_()["vms"]
    assert [r["name"] for r in rows] == sorted(f"vm{i}" for i in range(1, count + 1))
    assert sum(r["running"] for r in rows) == (count + 1) // 2
    assert all(r["drbd_connection"] == "Connected" and r["location"] == "home" for r in rows)
    assert host.opened.call_count == 1 and host.conn.list_queries == 1
    host.salt["drbd.status"].assert_called_once_with()
    assert not [n for n, _, _ in host.log if n.startswith("lvm.") or n == "cmd.run_all"]
