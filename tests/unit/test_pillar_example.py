"""The documented pillar and the lab's pillar are valid for the formula's schema."""

import yaml

from tests.unit.conftest import REPO, load

schema = load("_utils/pairvm_schema.py", "example_schema")


def test_pillar_example_is_valid_and_documents_every_vm_key():
    pairvm = yaml.safe_load((REPO / "pillar.example").read_text())["pairvm"]
    schema.settings(pairvm)
    vm = schema.vms(pairvm)["web1"]
    documented = set(yaml.safe_load((REPO / "pillar.example").read_text())["pairvm"]["vms"]["web1"])
    assert documented | {"disc_mib"} >= set(vm) - {"disc"}


def test_pillar_example_image_catalogue_and_guest_keys_are_valid():
    pairvm = yaml.safe_load((REPO / "pillar.example").read_text())["pairvm"]
    assert set(schema.images(pairvm)) == {"bookworm", "rescue"}
    assert len(schema.guest_ssh_keys(pairvm)) == 1


def test_the_lab_pillar_is_valid():
    pairvm = yaml.safe_load((REPO / "pillar" / "pairvm.sls").read_text())["pairvm"]
    assert set(schema.settings(pairvm)["pair"]) == {"hostA", "hostB"}


def test_pillar_example_host_network_renders_the_seed_interfaces():
    host_utils = load("_utils/pairvm_host.py", "example_host")
    pairvm = yaml.safe_load((REPO / "pillar.example").read_text())["pairvm"]
    me = pairvm["pair"]["hostA"]
    text = host_utils.interfaces(pairvm["host"]["network"], me["admin_ip"], me["replication_ip"])
    assert "iface br0" in text and "vlan1000" in text and "iface eth1" in text
