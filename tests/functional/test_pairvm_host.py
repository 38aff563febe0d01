"""pairvm's first execution functions and the host command on one real host."""

import json

import pytest

VM1 = """\
name: vm1
home: hostA
memory: 256
disc: 1G
vnc_display: 3
mac: "52:54:00:00:00:01"  # quoted, as the states write it (YAML 1.1 reads base 60)
ip: 10.79.0.10
"""


@pytest.fixture
def machine_file(lab_host):
    lab_host.run(["tee", "/machines/vm1"], input=VM1)
    yield
    lab_host.run(["rm", "-f", "/machines/vm1"])


def test_list_is_empty_on_a_fresh_host(salt_call):
    assert salt_call("pairvm.list")["vms"] == []


def test_list_reports_a_defined_vm_with_its_runtime_state(salt_call, machine_file):
    result = salt_call("pairvm.list")
    assert result["vms"] == [{
        "name": "vm1", "memory": 256, "disc": "1G", "running": False, "location": "home",
        "vnc_display": 3, "drbd_connection": "Unconfigured", "drbd_disk": "Unconfigured",
        "mac": "52:54:00:00:00:01", "ip": "10.79.0.10",
    }]
    assert result["memory"]["here"] == 256


def test_list_fields_keeps_the_named_columns(salt_call, machine_file):
    assert salt_call("pairvm.list", "fields=ip")["vms"] == [{"name": "vm1", "ip": "10.79.0.10"}]


def test_list_rejects_an_unknown_field_by_name(salt_call):
    rc, out = salt_call("pairvm.list", "fields=ip,colour", check=False)
    assert rc != 0
    assert "unknown list field(s) colour" in out


@pytest.fixture(scope="module")
def configured(salt_call):
    """This host's view of the pair (/machines/_global), as pairvm.config writes it."""
    salt_call("state.apply", "pairvm.config")


def test_health_check_passes_on_a_prepared_host_and_names_the_absent_peer(salt_call, configured):
    """A lab of one host: everything of this host passes; hostB does not exist here."""
    rc, report = salt_call("pairvm.check_system", check=False)
    assert rc == 1 and not report["ok"]
    failing = {name: c["detail"] for name, c in report["checks"].items() if not c["ok"]}
    assert failing == {"peer": "hostB does not answer ping on: admin 10.77.0.12, replication 10.78.0.12"}
    assert report["checks"]["addresses"]["detail"] == "10.77.0.11 on eth0, 10.78.0.11 on eth1"


def test_health_check_names_a_missing_volume_group(salt_call, lab_host, configured):
    lab_host.run(["vgrename", "there", "elsewhere"])
    try:
        rc, report = salt_call("pairvm.check_system", check=False)
    finally:
        lab_host.run(["vgrename", "elsewhere", "there"])
    assert rc == 1
    assert report["checks"]["volume_groups"] == {
        "ok": False, "detail": "missing volume group(s): there (pillar pairvm:host:volume_groups, or "
                               "vgcreate VG DEVICE)",
    }


def test_health_check_names_libvirt_when_it_does_not_answer(salt_call, lab_host, configured):
    lab_host.stop_libvirt()
    try:
        rc, report = salt_call("pairvm.check_system", check=False)
    finally:
        lab_host.start_libvirt()
    assert rc == 1
    assert not report["checks"]["libvirt"]["ok"]
    assert "cannot reach libvirt at qemu:///system" in report["checks"]["libvirt"]["detail"]


def test_state_writes_this_hosts_view_and_the_host_command(salt_call, lab_host):
    salt_call("state.apply", "pairvm")
    view = json.loads(lab_host.run(["cat", "/machines/_global"]).stdout)
    assert (view["me"], view["here_replication_ip"]) == ("hostA", "10.78.0.11")
    out = lab_host.run(["pairvm", "list"]).stdout
    assert out.splitlines()[0].split()[:3] == ["NAME", "MEM", "DISC"]


def test_host_command_explains_itself_and_refuses_the_unknown(salt_call, lab_host):
    salt_call("state.apply", "pairvm")
    assert "list [FIELD,...]" in lab_host.run(["pairvm", "help"]).stdout
    bad = lab_host.run(["pairvm", "frobnicate"], check=False)
    assert bad.returncode == 2
    assert "unknown command 'frobnicate'" in bad.stderr
    bad_field = lab_host.run(["pairvm", "list", "colour"], check=False)
    assert bad_field.returncode != 0
    assert "unknown list field(s) colour" in bad_field.stderr
