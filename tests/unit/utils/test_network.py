"""pairvmlib.network: the host's ifupdown text, from pillar pairvm:host:network.

Pure functions, so no loader mocking. The real ifupdown checks are in
tests/functional/test_host_tools.py and test_host_states.py.
"""

import copy
import re

import pytest
import yaml

from pairvmlib import defaults, network
from tests.unit.conftest import REPO

host = network

# The seed's network: admin eth0, replication eth1, VM access on VLAN 1000
# (vlan1000 on eth0) bridged into br0 (docs/host-pillar.md).
SEED = {
    "file": "/etc/network/interfaces.d/pairvm",
    "apply": True,
    "admin": {"interface": "eth0", "prefix": 24, "gateway": "192.0.2.1"},
    "replication": {"interface": "eth1", "prefix": 24},
    "vlans": {"vlan1000": {"raw_device": "eth0"}},
    "bridge": {"ports": ["vlan1000"]},
}
SEED_ARGS = ("192.0.2.11", "198.51.100.11", "br0")
SEED_TEXT = """\
# Managed by Salt (pairvm): rendered from pillar pairvm:host:network. Local edits are overwritten.

# admin: Salt, SSH, migration
auto eth0
iface eth0 inet static
    address 192.0.2.11/24
    gateway 192.0.2.1

# replication: DRBD
auto eth1
iface eth1 inet static
    address 198.51.100.11/24

# VLAN 1000 on eth0, a port of br0
auto vlan1000
iface vlan1000 inet manual
    vlan-raw-device eth0

# the VMs' bridge
auto br0
iface br0 inet manual
    bridge_ports vlan1000
    bridge_stp off
    bridge_fd 0
"""
# The lab's hosts (tests/lab/lab.py): admin eth0, replication eth1, pub0 in br0.
LAB = {
    "apply": False,
    "admin": {"interface": "eth0", "prefix": 24},
    "replication": {"interface": "eth1", "prefix": 24},
    "bridge": {"ports": ["pub0"]},
}
LAB_TEXT = """\
# Managed by Salt (pairvm): rendered from pillar pairvm:host:network. Local edits are overwritten.

# admin: Salt, SSH, migration
auto eth0
iface eth0 inet static
    address 10.77.0.11/24

# replication: DRBD
auto eth1
iface eth1 inet static
    address 10.78.0.11/24

# the VMs' bridge
auto br0
iface br0 inet manual
    bridge_ports pub0
    bridge_stp off
    bridge_fd 0
"""


def seed(**changes):
    network = copy.deepcopy(SEED)
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = network
        for key in parents:
            node = node.setdefault(key, {})
        if value is KeyError:
            node.pop(last, None)
        else:
            node[last] = value
    return network


def refused(network, *args, match):
    with pytest.raises(ValueError, match=match) as raised:
        host.interfaces(network, *(args or SEED_ARGS))
    return str(raised.value)


# --- ifupdown text ------------------------------------------------------------------

def test_seed_network_renders_admin_replication_vlan_and_bridge_in_ifup_order():
    assert host.interfaces(SEED, *SEED_ARGS) == SEED_TEXT
    assert host.interface_names(SEED, *SEED_ARGS) == ["eth0", "eth1", "vlan1000", "br0"]


def test_lab_network_renders_pub0_in_br0_without_gateway():
    assert host.interfaces(LAB, "10.77.0.11", "10.78.0.11", "br0") == LAB_TEXT
    assert host.interface_names(LAB, "10.77.0.11", "10.78.0.11") == ["eth0", "eth1", "br0"]


def test_dotted_vlan_needs_no_raw_device_and_keeps_bridge_settings():
    network = seed(vlans={"eth0.1000": {}}, bridge={"ports": ["eth0.1000"], "fd": 2, "stp": True,
                                                      "maxwait": 0, "mtu": 1500})
    text = host.interfaces(network, *SEED_ARGS)
    assert "auto eth0.1000\niface eth0.1000 inet manual\n\n" in text
    assert "# VLAN 1000 on eth0, a port of br0" in text
    assert ("iface br0 inet manual\n    bridge_ports eth0.1000\n    bridge_stp on\n    bridge_fd 2\n"
            "    bridge_maxwait 0\n    mtu 1500\n") in text


def test_parts_set_to_null_are_left_out():
    text = host.interfaces({"admin": None, "replication": None, "bridge": {"ports": []}}, *SEED_ARGS)
    assert "eth0" not in text and "eth1" not in text
    assert "iface br0 inet manual\n    bridge_ports none\n" in text
    assert host.interface_names({"bridge": None}, *SEED_ARGS) == []


def test_bridge_with_address_gateway_mtu_and_options():
    network = seed(admin__gateway=KeyError, bridge={"ports": ["vlan1000"], "address": "203.0.113.2/24",
                                                    "gateway": "203.0.113.1",
                                                    "options": {"dns-nameservers": "203.0.113.53 9.9.9.9"}},
                   replication__mtu=9000)
    text = host.interfaces(network, *SEED_ARGS)
    assert "iface eth1 inet static\n    address 198.51.100.11/24\n    mtu 9000\n" in text
    assert ("iface br0 inet static\n    address 203.0.113.2/24\n    gateway 203.0.113.1\n"
            "    bridge_ports vlan1000\n    bridge_stp off\n    bridge_fd 0\n"
            "    dns-nameservers 203.0.113.53 9.9.9.9\n") in text


def test_rendering_is_deterministic_and_ignores_file_and_apply():
    text = host.interfaces(SEED, *SEED_ARGS)
    assert host.interfaces(dict(SEED, apply=False, file="/x"), *SEED_ARGS) == text
    reordered = dict(reversed(list(SEED.items())))
    assert host.interfaces(reordered, *SEED_ARGS) == text


@pytest.mark.parametrize("name", [
    "eth0;", "eth 0", "-eth0", "eth0/1", "eth0:1", "a" * 16, "", "eth0\n", "lo", "none", "all",
    "eth0.", "a..b", "x.y.z", "eth0.0", "eth0.0100", "eth0.5000", "eth0.1.2", 5, None, "é0",
])
def test_bad_interface_names_are_refused(name):
    message = refused(seed(admin__interface=name), match="network.admin.interface")
    assert repr(name) in message


@pytest.mark.parametrize("field, value, match", [
    ("admin__prefix", 33, "network.admin.prefix"),
    ("admin__prefix", "24", "network.admin.prefix"),
    ("admin__prefix", True, "network.admin.prefix"),
    ("admin__prefix", KeyError, "network.admin.prefix.*missing"),
    ("admin__interface", KeyError, "network.admin.interface.*missing"),
    ("admin__gateway", "192.0.2.300", "network.admin.gateway"),
    ("admin__gateway", "192.0.3.1", "network.admin.gateway.*inside 192.0.2.0/24"),
    ("admin__gateway", "192.0.2.11", "network.admin.gateway.*another address"),
    ("admin__gateway", "192.0.2.01", "network.admin.gateway"),
    ("admin__mtu", 67, "network.admin.mtu"),
    ("admin__mask", 24, "network.admin.*unknown keys"),
    ("replication__interface", "eth0", "network.replication.interface.*also the admin"),
    ("bridge__address", "203.0.113.0/24", "network.bridge.address.*network or broadcast"),
    ("bridge__address", "203.0.113.2", "network.bridge.address.*prefix length"),
    ("bridge__address", "192.0.2.50/24", "network.bridge.address.*overlaps the admin network"),
    ("bridge__gateway", "203.0.113.1", "network.bridge.gateway.*needs bridge.address"),
    ("bridge__ports", "vlan1000", "network.bridge.ports.*must be a list"),
    ("bridge__ports", ["eth0"], "network.bridge.ports.*admin interface"),
    ("bridge__ports", ["br0"], "network.bridge.ports.*bridge br0 itself"),
    ("bridge__ports", ["vlan1000", "vlan1000"], "network.bridge.ports.*twice"),
    ("bridge__stp", "off", "network.bridge.stp"),
    ("bridge__fd", 31, "network.bridge.fd"),
    ("vlans", {"pub1000": {"raw_device": "eth0"}}, "network.vlans.pub1000.*not a VLAN interface name"),
    ("vlans", {"vlan1000": {}}, "network.vlans.vlan1000.raw_device.*missing"),
    ("vlans", {"vlan5000": {"raw_device": "eth0"}}, "network.vlans.vlan5000.*outside 1..4094"),
    ("vlans", {"eth0.1000": {"raw_device": "eth1"}}, "raw_device.*differs"),
    ("vlans", {"vlan1000": {"raw_device": "br0"}}, "raw_device.*bridge or one of its ports"),
    ("vlans", {"eth1": {}}, "network.vlans.eth1.*already used"),
    ("vlans", ["vlan1000"], "network.vlans.*mapping"),
    ("routes", [], "network.*unknown keys"),
])
def test_bad_values_are_refused_naming_the_key(field, value, match):
    refused(seed(**{field: value}), match=match)


@pytest.mark.parametrize("admin_ip, replication_ip, match", [
    ("192.0.2.256", "198.51.100.11", "network.admin address"),
    ("192.0.2.0", "198.51.100.11", "network or broadcast"),
    (None, "198.51.100.11", "network.admin address"),
    ("192.0.2.11", "192.0.2.12", "admin and replication networks overlap"),
])
def test_bad_addresses_from_the_pair_are_refused(admin_ip, replication_ip, match):
    refused(SEED, admin_ip, replication_ip, "br0", match=match)


def test_bad_bridge_name_is_refused():
    refused(SEED, "192.0.2.11", "198.51.100.11", "br 0", match="pairvm:bridge")
    refused(seed(admin__interface="br0"), match="pairvm:bridge.*admin")


@pytest.mark.parametrize("key, value, match", [
    ("up", "ip route add 10.0.0.0/8 via 192.0.2.1", "shell command"),
    ("post-up", "true", "shell command"),
    ("pre_down", "true", "shell command"),
    ("iface", "eth9 inet bogus", "stanza keyword"),
    ("auto", "eth9", "stanza keyword"),
    ("allow-hotplug", "eth9", "stanza keyword"),
    ("source", "/etc/passwd", "stanza keyword"),
    ("address", "192.0.2.99/24", "set by pairvm"),
    ("bridge_ports", "eth9", "set by pairvm"),
    ("vlan-raw-device", "eth9", "set by pairvm"),
    ("metric", "1\nauto eth9", "must be a number or words"),
    ("metric", "1 \\", "must be a number or words"),
    ("metric", "1 # x", "must be a number or words"),
    ("metric", "", "must be a number or words"),
    ("metric", True, "must be a number or words"),
    ("Metric", 1, "not an ifupdown option name"),
])
def test_unsafe_extra_options_are_refused(key, value, match):
    refused(seed(admin__options={key: value}), match=match)


def test_every_rendered_line_is_a_stanza_line_or_an_indented_option():
    network = seed(admin__options={"metric": 100, "hwaddress": "ether 52:54:00:12:34:56"})
    for line in host.interfaces(network, *SEED_ARGS).splitlines():
        assert line == "" or line.startswith("#") or re.fullmatch(r"(auto|iface) \S+( inet \w+)?", line) \
            or re.fullmatch(r"    [a-z][a-z0-9_-]* [A-Za-z0-9._:/,=+@% -]+", line), line


# --- docs/host-pillar.md ----------------------------------------------------------

def doc_blocks():
    text = (REPO / "docs" / "host-pillar.md").read_text()
    blocks = re.findall(r"```(yaml|)\n(.*?)```", text, re.S)
    return [yaml.safe_load(body) for kind, body in blocks if kind == "yaml"], \
        [body for kind, body in blocks if kind == ""]


def test_documented_seed_example_renders_the_documented_file():
    (example, lab), (rendered,) = doc_blocks()
    seed_network = example["pairvm"]["host"]["network"]
    assert host.interfaces(seed_network, *SEED_ARGS) == rendered == SEED_TEXT
    lab_network = lab["pairvm"]["host"]["network"]
    assert host.interfaces(lab_network, "10.77.0.11", "10.78.0.11") == LAB_TEXT


def test_documented_example_has_every_default_key():
    (example, _), _ = doc_blocks()
    wanted = defaults.HOST
    documented = example["pairvm"]["host"]
    assert set(wanted) - {"packages"} <= set(documented)
    for section in ("network", "libvirt", "ssh", "completion"):
        assert set(wanted[section]) <= set(documented[section]), section
    text = (REPO / "docs" / "host-pillar.md").read_text()
    assert all(package in text for package in wanted["packages"])
