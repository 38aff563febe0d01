"""salt-run pairvm.verify on the lab pair: silent when healthy, each injected fault named."""

import json

import pytest

from tests.integration.test_lab import _guest_xml
from tests.integration.test_vm_lifecycle import boots, hv, wait_for, wait_in_sync


@pytest.fixture(scope="module")
def healthy(salt_run_cli, salt_cli, lab):
    """A running VM homed on hostA, in sync: the healthy pair verify checks."""
    ret = salt_run_cli.run("pairvm.create", "vf1", "hostA", "128", "64M",
                           f"hypervisor_options={json.dumps(hv('vf1'))}")
    assert ret.returncode == 0, ret
    wait_in_sync(lab, salt_cli, "vf1")
    host = lab.hosts["hostA"]
    before = boots(host, "vf1")
    assert salt_cli.run("pairvm.start", "vf1", minion_tgt="hostA").returncode == 0
    wait_for(lambda: boots(host, "vf1") > before, "vf1 boot")
    yield "vf1"
    salt_run_cli.run("pairvm.destroy", "vf1", "confirm=True", "force=True")


def verify(salt_run_cli):
    ret = salt_run_cli.run("pairvm.verify")
    return ret.returncode, ret.data


def codes(data):
    return {(f["code"], f["vm"], f["host"]) for f in data["findings"]}


def test_a_healthy_pair_reports_nothing(healthy, salt_run_cli):
    rc, data = verify(salt_run_cli)
    assert (rc, data["findings"], data["ok"]) == (0, [], True), data["lines"]


def test_a_machines_file_edited_on_one_host(healthy, salt_run_cli, lab):
    host = lab.hosts["hostB"]
    original = host.run(["cat", "/machines/vf1"]).stdout
    host.run(["tee", "/machines/vf1"], input=original.replace('"memory": 128', '"memory": 256'))
    try:
        rc, data = verify(salt_run_cli)
    finally:
        host.run(["tee", "/machines/vf1"], input=original)
    assert rc == 1
    assert "EMACHINESDIFF" in {c for c, _, _ in codes(data)}, data["lines"]


def test_a_drbd_resource_down_on_the_peer(healthy, lab, salt_run_cli, salt_cli):
    assert salt_cli.run("drbd.down", "vf1", minion_tgt="hostB").returncode == 0
    try:
        rc, data = verify(salt_run_cli)
    finally:
        salt_cli.run("drbd.up", "vf1", minion_tgt="hostB")
        wait_in_sync(lab, salt_cli, "vf1", "vf1 in sync again")
    assert rc == 1
    assert ("EDRBDDISCONNECTED", "vf1", "hostA") in codes(data), data["lines"]


def test_a_vm_running_on_both_hosts(healthy, salt_run_cli, lab):
    # pairvm and DRBD refuse a second start; a hand-made domain of the same
    # name is how an operator's mistake would look.
    host = lab.hosts["hostB"]
    host.run(["tee", "/var/lib/libvirt/vf1-rogue.xml"], input=_guest_xml("vf1"))
    host.run(["virsh", "create", "/var/lib/libvirt/vf1-rogue.xml"])
    try:
        rc, data = verify(salt_run_cli)
    finally:
        host.run(["virsh", "destroy", "vf1"], check=False)
    assert rc == 1
    assert "EVMRUNNINGTWICE" in {c for c, _, _ in codes(data)}, data["lines"]


def test_a_volume_group_missing(healthy, salt_run_cli, lab):
    host = lab.hosts["hostB"]
    host.run(["vgrename", "here", "elsewhere"])  # hostB's here/ holds no LV
    try:
        rc, data = verify(salt_run_cli)
    finally:
        host.run(["vgrename", "elsewhere", "here"])
    assert rc == 1
    assert ("EVGMISSING", None, "hostB") in codes(data), data["lines"]
    rc, data = verify(salt_run_cli)
    assert rc == 0, data["lines"]
