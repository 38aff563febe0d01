"""The documented pillar and the lab's pillar are valid for the formula's schema."""

import yaml

from pairvmlib import alloc, defaults, images, network, schema
from tests.unit.conftest import REPO


def test_pillar_example_is_valid_and_documents_every_vm_key():
    pairvm = yaml.safe_load((REPO / "pillar.example").read_text())["pairvm"]
    schema.settings(pairvm)
    vm = schema.vms(pairvm)["web1"]
    documented = set(yaml.safe_load((REPO / "pillar.example").read_text())["pairvm"]["vms"]["web1"])
    assert documented | {"disc_mib"} >= set(vm) - {"disc"}


def test_pillar_example_image_catalogue_and_guest_keys_are_valid():
    pairvm = yaml.safe_load((REPO / "pillar.example").read_text())["pairvm"]
    catalogue = images.catalogue(pairvm)
    assert set(catalogue) == set(defaults.IMAGES) - {"jammy"} | {"trixie-local", "rescue"}
    assert catalogue["bookworm"]["sha256"] and not catalogue["bookworm"]["checksums"]
    assert catalogue["trixie-local"]["checksums"].endswith("/trixie/latest/SHA512SUMS")
    assert images.guest_hostname("web1", None, pairvm) == "web1.example.org"
    assert len(images.guest_ssh_keys(pairvm)) == 1


def test_the_lab_pillar_is_valid():
    pairvm = yaml.safe_load((REPO / "pillar" / "pairvm.sls").read_text())["pairvm"]
    assert set(schema.settings(pairvm)["pair"]) == {"hostA", "hostB"}


def test_pillar_example_host_network_renders_the_seed_interfaces():
    pairvm = yaml.safe_load((REPO / "pillar.example").read_text())["pairvm"]
    me = pairvm["pair"]["hostA"]
    text = network.interfaces(pairvm["host"]["network"], me["admin_ip"], me["replication_ip"])
    assert "iface br0" in text and "vlan1000" in text and "iface eth1" in text


def test_pillar_example_documents_every_default_key():
    """pillar.example shows each top-level key of the defaults, and the backup settings."""
    pairvm = yaml.safe_load((REPO / "pillar.example").read_text())["pairvm"]
    assert set(defaults.pillar()) - {"cli"} <= set(pairvm)
    assert set(defaults.BACKUP) <= set(pairvm["backup"])
    assert set(defaults.POOL) <= set(pairvm["pool"])


def test_pillar_example_second_pair_in_comments_is_valid_beside_the_first():
    """The second pair the comments show is a valid pair that pair one does not clash with."""
    text = (REPO / "pillar.example").read_text()
    two = "\n".join(line[3:] for line in text.split("pillar/pairvm/two.sls")[1].split("---")[0].splitlines()
                    if line.startswith("#   "))
    one, two = yaml.safe_load(text)["pairvm"], yaml.safe_load(two)["pairvm"]
    settings = {p["pair_name"]: schema.settings(p) for p in (one, two)}
    assert sorted(settings) == ["one", "two"]
    others = {"one": alloc.allocate_pair(settings["one"], schema.vms(one), {}, {})}
    # the same pool, on another public network: its first free address
    assert alloc.allocate_pair(settings["two"], schema.vms(two), {}, others)["vms"]["db1"]["alloc"]["ip"] \
        == "203.0.113.5"
