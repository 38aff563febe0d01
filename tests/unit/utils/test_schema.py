"""_utils/pairvm_schema.py: pillar validation, the VM record and its canonical YAML."""

import copy
import json
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pairvmlib import defaults, schema
from pairvmlib.errors import Invalid
from tests.unit.conftest import REPO

PAIR = {
    "hostA": {"admin_ip": "192.0.2.11", "replication_ip": "198.51.100.11"},
    "hostB": {"admin_ip": "192.0.2.12", "replication_ip": "198.51.100.12"},
}
POOL = {"cidr": "203.0.113.0/24", "gateway": "203.0.113.1", "reserved": ["203.0.113.200"]}
VM = {"home": "hostA", "memory": 512, "disc": "10G"}
ALLOC = {"ip": "203.0.113.5", "mac": "52:54:00:00:00:01", "drbd_port": 7800, "drbd_minor": 0,
         "vnc_display": 1}


def pillar(**overrides):
    """A valid ``pairvm:`` pillar, with top-level keys replaced by ``overrides``."""
    base = {"pair": copy.deepcopy(PAIR), "pool": copy.deepcopy(POOL), "memory_cap": 4096, "vms": {}}
    base.update(overrides)
    return base


@pytest.fixture(scope="module")
def norm():
    return schema.settings(pillar())


def errors_of(func, *args):
    """The message of the Invalid ``func(*args)`` raises."""
    with pytest.raises(Invalid) as info:
        func(*args)
    return str(info.value)


# --- validate_name ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "web1", "db-2", "abcdefghijkl", "a--b"])
def test_valid_names(name):
    assert schema.validate_name(name) == name


@pytest.mark.parametrize(
    "name, why",
    [
        ("", ""),
        ("Web1", "'W'"),
        ("1web", "must start with a letter"),
        ("-web", "must start with a letter"),
        ("web_1", "'_'"),
        ("a..b", "'.'"),
        ("../etc", "'./'"),
        ("a/b", "'/'"),
        ("a;reboot", "';'"),
        ("$(id)", "'$()'"),
        ("a b", "' '"),
        ("web1\n", "'\\n'"),
        ("abcdefghijklm", "it has 13"),
        ("wéb", "'é'"),
        (None, ""),
        (7, ""),
    ],
)
def test_bad_names_name_the_rule(name, why):
    message = errors_of(schema.validate_name, name)
    assert message.startswith(f"vm {name!r}: name: must be 1 to 12 characters")
    assert "vm-<name>, at most 15 characters" in message
    assert why in message


@pytest.mark.parametrize("name", ["all", "common", "global"])
def test_names_drbdadm_reserves_are_refused(name):
    assert "reserved by drbdadm" in errors_of(schema.validate_name, name)


# --- parse_size_mib --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, mib",
    [
        (16, 16), (512, 512), ("512M", 512), ("512m", 512), ("1024", 1024), ("10G", 10240),
        ("10g", 10240), ("10GiB", 10240), ("10 gib", 10240), ("1T", 1048576), ("2TiB", 2097152),
        ("512MiB", 512), ("1.5G", 1536), ("0.5T", 524288), (" 20M ", 20), ("016G", 16384),
    ],
)
def test_sizes(value, mib):
    assert schema.parse_size_mib(value) == mib


@pytest.mark.parametrize(
    "value, why",
    [
        (0, "at least 16"), (-1, "at least 16"), ("0", "at least 16"), ("15M", "at least 16"),
        ("-5G", "size like"), ("0.5M", "whole number of MiB"), ("16.5M", "whole number of MiB"),
        ("1.0001G", "whole number of MiB"), ("lots", "size like"), ("", "size like"),
        ("10K", "size like"), ("10GB", "size like"), ("10 G B", "size like"), ("1e3", "size like"),
        ("10G;reboot", "size like"), ("\u0661\u0660G", "size like"), (True, "size like"),
        (False, "size like"), (1.5, "size like"), (1024.0, "size like"), (None, "size like"),
        ([16], "size like"), ("99999999999999T", "at most 8796093022208 MiB"),
    ],
)
def test_bad_sizes(value, why):
    message = errors_of(schema.parse_size_mib, value)
    assert message.startswith("size: ") and why in message and repr(value) in message


def test_size_minimum_can_be_lowered():
    assert schema.parse_size_mib("1M", minimum=1) == 1


@settings(max_examples=50, database=None)
@given(st.integers(min_value=16, max_value=2**30), st.sampled_from(["", "M", "m", "MiB", "mib"]))
def test_sizes_in_mib(number, unit):
    assert schema.parse_size_mib(f"{number}{unit}") == number


@settings(max_examples=50, database=None)
@given(st.integers(min_value=1, max_value=2**20), st.sampled_from([("G", 1024), ("T", 1024**2)]))
def test_sizes_in_larger_units(number, unit):
    suffix, factor = unit
    assert schema.parse_size_mib(f"{number}{suffix}") == number * factor
    assert schema.parse_size_mib(f"{number}{suffix.lower()}ib") == number * factor


# --- settings --------------------------------------------------------------------------------


def test_settings_fill_the_defaults():
    result = schema.settings({"pair": PAIR})
    assert result == {
        "pair_name": "default",
        "pair": PAIR,
        "pool": None,
        "drbd": {"port_range": [7800, 7999], "minor_range": [0, 199]},
        "vnc": {"display_range": [1, 99]},
        "mac_prefix": "52:54:00",
        "bridge": "br0",
        "memory_cap": 0,
        "domain_type": "kvm",
        "volume_groups": ["here", "there"],
        "backup": defaults.BACKUP,
    }


def test_settings_normalize_and_pass_other_keys_through():
    raw = pillar(
        pool={"cidr": "203.0.113.0/24", "gateway": "203.0.113.1", "reserve_first": 0,
              "reserved": ["203.0.113.9", "203.0.113.7", "203.0.113.9"]},
        mac_prefix="0A:BC:DE", drbd={"port_range": (7000, 7010)}, libvirt_uri="qemu:///system",
        cli={"path": "/usr/local/sbin/pairvm"}, bridge=None, pair_name="dc1-b",
    )
    result = schema.settings(raw)
    assert result["pool"] == {"cidr": "203.0.113.0/24", "gateway": "203.0.113.1", "reserve_first": 0,
                              "reserved": ["203.0.113.7", "203.0.113.9"], "network": "default"}
    assert result["pair_name"] == "dc1-b"
    network = schema.settings(pillar(pool={**raw["pool"], "network": "dc2.public"}))["pool"]["network"]
    assert network == "dc2.public"
    assert result["mac_prefix"] == "0a:bc:de"
    assert result["drbd"] == {"port_range": [7000, 7010], "minor_range": [0, 199]}
    assert result["bridge"] == "br0"
    assert result["libvirt_uri"] == "qemu:///system" and result["cli"] == {"path": "/usr/local/sbin/pairvm"}
    assert "vms" not in result
    assert json.loads(json.dumps(result)) == result


@pytest.mark.parametrize("path", ["pillar.example", "pillar/pairvm.sls"])
def test_the_shipped_pillars_are_valid(path):
    data = yaml.safe_load((REPO / path).read_text())["pairvm"]
    assert set(schema.settings(data)["pair"]) == set(data["pair"])


BAD_SETTINGS = [
    ({"pair": {"hostA": PAIR["hostA"]}}, "pair: must map exactly two minion ids"),
    ({"pair": {**PAIR, "hostC": {"admin_ip": "192.0.2.13", "replication_ip": "198.51.100.13"}}},
     "pair: must map exactly two minion ids to {admin_ip, replication_ip}, got 3"),
    ({"pair": {"hostA": PAIR["hostA"], "-o": PAIR["hostB"]}}, "pair: '-o' is not a minion id"),
    ({"pair": {**PAIR, "hostB": {"admin_ip": "192.0.2.11", "replication_ip": "198.51.100.12"}}},
     "pair.hostB.admin_ip: '192.0.2.11' is also pair.hostA.admin_ip"),
    ({"pair": {**PAIR, "hostB": {"admin_ip": "192.0.2.12", "replication_ip": "192.0.2.12"}}},
     "pair.hostB.replication_ip: '192.0.2.12' is also pair.hostB.admin_ip"),
    ({"pair": {**PAIR, "hostB": {"admin_ip": "192.0.2.300", "replication_ip": "198.51.100.12"}}},
     "pair.hostB.admin_ip: is not a valid IPv4 address, got '192.0.2.300'"),
    ({"pair": {**PAIR, "hostB": {"admin_ip": "192.0.2.12"}}}, "pair.hostB.replication_ip: must be"),
    ({"pair": {**PAIR, "hostB": {**PAIR["hostB"], "ssh": "x"}}}, "pair.hostB: unknown key(s) ssh"),
    ({"pair_name": "Two"}, "pair_name: must be 1 to 32 characters: a lower-case letter"),
    ({"pair_name": "../x"}, "pair_name: must be 1 to 32 characters"),
    ({"pair_name": "a" * 33}, "pair_name: must be 1 to 32 characters"),
    ({"pair_name": 2}, "pair_name: must be"),
    ({"pool": {**POOL, "network": "dc 2"}}, "pool.network: must be a word of 1 to 64 letters"),
    ({"pool": {**POOL, "network": "-x"}}, "pool.network: must be a word"),
    ({"pool": {**POOL, "cidr": "203.0.113.1/24"}}, "pool.cidr: is not a valid IPv4 network"),
    ({"pool": {**POOL, "cidr": "203.0.113.0"}}, "pool.cidr: must be an IPv4 network"),
    ({"pool": {**POOL, "cidr": "2001:db8::/64"}}, "pool.cidr: is not a valid IPv4 network"),
    ({"pool": {"cidr": "203.0.113.0/31", "gateway": "203.0.113.0"}}, "pool.cidr: must be a /30 or larger"),
    ({"pool": {**POOL, "gateway": "198.51.100.1"}}, "pool.gateway: '198.51.100.1' is not a host address"),
    ({"pool": {**POOL, "gateway": "203.0.113.255"}}, "pool.gateway: '203.0.113.255' is not a host address"),
    ({"pool": {**POOL, "gateway": None}}, "pool.gateway: must be an IPv4 address"),
    ({"pool": {**POOL, "reserve_first": -1}}, "pool.reserve_first: must be a whole number from 0 or more"),
    ({"pool": {**POOL, "reserve_first": True}}, "pool.reserve_first: must be a whole number"),
    ({"pool": {**POOL, "reserve_first": 254}}, "pool: no address of '203.0.113.0/24' is left for VMs"),
    ({"pool": {**POOL, "reserve_first": 252, "reserved": ["203.0.113.253", "203.0.113.254"]}},
     "pool: no address of '203.0.113.0/24' is left for VMs"),
    ({"pool": {"cidr": "203.0.113.0/30", "gateway": "203.0.113.2", "reserve_first": 0,
               "reserved": ["203.0.113.1"]}}, "pool: no address of '203.0.113.0/30' is left"),
    ({"pool": {**POOL, "reserved": ["198.51.100.7"]}}, "pool.reserved: '198.51.100.7' is outside the pool"),
    ({"pool": {**POOL, "reserved": "203.0.113.7"}}, "pool.reserved: must be a list"),
    ({"pool": {**POOL, "reserverd": []}}, "pool: unknown key(s) reserverd"),
    ({"drbd": {"port_range": [7999, 7800]}}, "drbd.port_range: must be [first, last] with 1024 <= first"),
    ({"drbd": {"port_range": [80, 90]}}, "drbd.port_range: must be"),
    ({"drbd": {"port_range": [7800, 70000]}}, "drbd.port_range: must be"),
    ({"drbd": {"port_range": [7800]}}, "drbd.port_range: must be"),
    ({"drbd": {"port_range": ["7800", "7999"]}}, "drbd.port_range: must be"),
    ({"drbd": {"minor_range": [0, 1048576]}}, "drbd.minor_range: must be [first, last] with 0 <= first"),
    ({"drbd": {"minor_range": [True, 5]}}, "drbd.minor_range: must be"),
    ({"drbd": {"ports": [1, 2]}}, "drbd: unknown key(s) ports"),
    ({"vnc": {"display_range": [0, 10000]}}, "vnc.display_range: must be [first, last] with 0 <= first"),
    ({"vnc": {"display_range": [1800, 1950]}}, "vnc.display_range: VNC ports 7700..7850 overlap"),
    ({"mac_prefix": "01:00:5e"}, "mac_prefix: must be locally administered unicast"),
    ({"mac_prefix": "00:16:3e"}, "mac_prefix: must be locally administered unicast"),
    ({"mac_prefix": 190440}, "mac_prefix: must be 3 hex octets like '52:54:00' (quote it in YAML"),
    ({"mac_prefix": "52:54"}, "mac_prefix: must be 3 hex octets"),
    ({"mac_prefix": "52-54-00"}, "mac_prefix: must be 3 hex octets"),
    ({"bridge": "br0123456789abcd"}, "bridge: must be an interface name of 1 to 15"),
    ({"bridge": ".."}, "bridge: must be an interface name"),
    ({"bridge": "-br0"}, "bridge: must be an interface name"),
    ({"bridge": "br 0"}, "bridge: must be an interface name"),
    ({"bridge": "br0;reboot"}, "bridge: must be an interface name"),
    ({"memory_cap": -1}, "memory_cap: must be a whole number of MiB from 0"),
    ({"memory_cap": "64G"}, "memory_cap: must be a whole number of MiB"),
    ({"memory_cap": True}, "memory_cap: must be a whole number of MiB"),
    ({"domain_type": "xen"}, "domain_type: must be one of kvm, qemu, got 'xen'"),
    ({"volume_groups": ["here", "here"]}, "volume_groups: must be two distinct"),
    ({"volume_groups": ["here", "../x"]}, "volume_groups: must be two distinct"),
    ({"pair": {**PAIR, "hostB": {"admin_ip": "203.0.113.50", "replication_ip": "198.51.100.12"}}},
     "pair.hostB.admin_ip: '203.0.113.50' is in the VM pool '203.0.113.0/24'; list it in pool.reserved"),
]


@pytest.mark.parametrize("overrides, message", BAD_SETTINGS)
def test_bad_settings(overrides, message):
    assert message in errors_of(schema.settings, pillar(**overrides))


def test_a_host_address_in_the_pool_is_fine_when_reserved():
    hosts = {**PAIR, "hostB": {"admin_ip": "203.0.113.50", "replication_ip": "198.51.100.12"}}
    result = schema.settings(pillar(pair=hosts, pool={**POOL, "reserved": ["203.0.113.50"]}))
    assert result["pool"]["reserved"] == ["203.0.113.50"]


def test_settings_report_every_problem_at_once():
    message = errors_of(schema.settings, pillar(bridge="", memory_cap=-5, domain_type="xen",
                                                 pool={**POOL, "gateway": "10.0.0.1"}))
    lines = message.splitlines()
    assert len(lines) == 4
    assert [line.split(":")[0] for line in lines] == ["pool.gateway", "bridge", "memory_cap", "domain_type"]


def test_settings_are_not_a_mapping():
    assert "pairvm: must be a mapping" in errors_of(schema.settings, ["pair"])


# --- vm_definition ---------------------------------------------------------------------------


def test_definition_is_normalized(norm):
    result = schema.vm_definition("web1", {**VM, "mac": "52:54:00:AB:CD:EF"}, norm)
    assert result == {
        "home": "hostA", "memory": 512, "vcpus": 1, "disc_mib": 10240, "ip": None,
        "mac": "52:54:00:ab:cd:ef", "bridge": None, "drbd_port": None, "vnc_display": None,
        "state": "running", "suppress": False, "hypervisor_options": {}, "cdrom": None,
    }


def test_a_normalized_definition_is_a_valid_definition(norm):
    full = {**VM, "vcpus": 4, "ip": "203.0.113.9", "mac": "02:00:00:00:00:01", "bridge": "br1",
            "drbd_port": 7810, "vnc_display": 0 + 5, "state": "stopped", "suppress": True,
            "hypervisor_options": {"kernel": "/boot/vmlinuz", "initrd": "/boot/initrd.img",
                                   "cmdline": "console=ttyS0 root=/dev/vda1", "machine": "pc-i440fx-8.2",
                                   "cpu_model": "host-passthrough"},
            "cdrom": "/srv/iso/debian 12.iso"}
    once = schema.vm_definition("web1", full, norm)
    assert schema.vm_definition("web1", once, norm) == once
    assert once["hypervisor_options"]["cmdline"] == "console=ttyS0 root=/dev/vda1"


def test_the_example_from_the_brief(norm):
    message = errors_of(schema.vm_definition, "web1", {**VM, "memory": "lots"}, norm)
    assert message == "vm 'web1': memory: must be a whole number of MiB > 0 (at most 16777216), got 'lots'"


BAD_DEFINITIONS = [
    ({"memory": 512, "disc": "1G"}, "home: is required"),
    ({**VM, "home": "hostC"}, "home: must be one of hostA, hostB, got 'hostC'"),
    ({"home": "hostA", "disc": "1G"}, "memory: is required"),
    ({**VM, "memory": 0}, "memory: must be a whole number of MiB > 0"),
    ({**VM, "memory": -512}, "memory: must be a whole number of MiB > 0"),
    ({**VM, "memory": "512"}, "memory: must be a whole number of MiB > 0"),
    ({**VM, "memory": 512.0}, "memory: must be a whole number of MiB > 0"),
    ({**VM, "memory": True}, "memory: must be a whole number of MiB > 0"),
    ({**VM, "vcpus": 0}, "vcpus: must be a whole number from 1 to 64, got 0"),
    ({**VM, "vcpus": 65}, "vcpus: must be a whole number from 1 to 64, got 65"),
    ({**VM, "vcpus": True}, "vcpus: must be a whole number"),
    ({"home": "hostA", "memory": 512}, "disc: is required"),
    ({**VM, "disc": "8M"}, "disc: must be at least 16 MiB, got '8M'"),
    ({**VM, "disc": "big"}, "disc: must be a whole number of MiB or a size like"),
    ({**VM, "disc_mib": 1024}, "disc: give disc or disc_mib, not both"),
    ({"home": "hostA", "memory": 512, "disc_mib": "1G"}, "disc: must be a whole number of MiB from 16"),
    ({**VM, "ip": "198.51.100.5"}, "ip: '198.51.100.5' is outside the pool '203.0.113.0/24'"),
    ({**VM, "ip": "203.0.113.0"}, "ip: '203.0.113.0' is the network or broadcast address"),
    ({**VM, "ip": "203.0.113.255"}, "ip: '203.0.113.255' is the network or broadcast address"),
    ({**VM, "ip": "203.0.113.1"}, "ip: '203.0.113.1' is the gateway, never given to a VM"),
    ({**VM, "ip": "203.0.113.4"}, "ip: '203.0.113.4' is one of the first 4 host addresses"),
    ({**VM, "ip": "203.0.113.200"}, "ip: '203.0.113.200' is reserved (pool.reserved)"),
    ({**VM, "ip": "203.0.113.5/24"}, "ip: is not a valid IPv4 address, got '203.0.113.5/24'"),
    ({**VM, "ip": 3405803781}, "ip: must be an IPv4 address as a string"),
    ({**VM, "mac": "01:00:5e:00:00:01"}, "mac: must be a unicast address"),
    ({**VM, "mac": "00:00:00:00:00:00"}, "mac: must be a unicast address"),
    ({**VM, "mac": 190440}, "mac: must be a MAC address like '52:54:00:12:34:56' (quote it in YAML"),
    ({**VM, "mac": "52:54:00:00:01"}, "mac: must be a MAC address"),
    ({**VM, "mac": "52-54-00-00-00-01"}, "mac: must be a MAC address"),
    ({**VM, "bridge": "br0;reboot"}, "bridge: must be an interface name"),
    ({**VM, "drbd_port": 8000}, "drbd_port: must be a whole number in drbd.port_range from 7800 to 7999"),
    ({**VM, "drbd_port": "7800"}, "drbd_port: must be a whole number in drbd.port_range"),
    ({**VM, "vnc_display": 0}, "vnc_display: must be a whole number in vnc.display_range from 1 to 99"),
    ({**VM, "drbd_minor": 3}, "definition: unknown key(s) drbd_minor"),
    ({**VM, "state": "up"}, "state: must be one of running, stopped, got 'up'"),
    ({**VM, "suppress": "yes"}, "suppress: must be true or false, got 'yes'"),
    ({**VM, "suppress": 1}, "suppress: must be true or false, got 1"),
    ({**VM, "hypervisor_options": {"bios": "x"}}, "hypervisor_options: unknown key(s) bios; allowed: kernel"),
    ({**VM, "hypervisor_options": ["kernel"]}, "hypervisor_options: must be a mapping"),
    ({**VM, "hypervisor_options": {"kernel": "vmlinuz"}}, "hypervisor_options: kernel: must be an absolute"),
    ({**VM, "hypervisor_options": {"kernel": "/boot/../etc/shadow"}}, "hypervisor_options: kernel: must be"),
    ({**VM, "hypervisor_options": {"kernel": "/k", "initrd": 5}}, "hypervisor_options: initrd: must be"),
    ({**VM, "hypervisor_options": {"kernel": "/k", "cmdline": "a\nb"}}, "hypervisor_options: cmdline: must"),
    ({**VM, "hypervisor_options": {"cmdline": "console=ttyS0"}},
     "hypervisor_options: initrd and cmdline need kernel"),
    ({**VM, "hypervisor_options": {"machine": "pc;reboot"}}, "hypervisor_options: machine: must be a word"),
    ({**VM, "hypervisor_options": {"cpu_model": "-host"}}, "hypervisor_options: cpu_model: must be a word"),
    ({**VM, "cdrom": "debian.iso"}, "cdrom: must be an absolute path"),
    ({**VM, "cdrom": "/srv/../etc/shadow"}, "cdrom: must be an absolute path without '..'"),
    ({**VM, "cdrom": "/srv/iso\x00"}, "cdrom: must be an absolute path"),
    ({**VM, "cdrom": 5}, "cdrom: must be an absolute path"),
    ({**VM, "memroy": 5, "disk": "1G"}, "definition: unknown key(s) disk, memroy; allowed: home, memory"),
]


@pytest.mark.parametrize("definition, message", BAD_DEFINITIONS)
def test_bad_definitions(definition, message, norm):
    assert f"vm 'web1': {message}" in errors_of(schema.vm_definition, "web1", definition, norm)


def test_every_problem_of_a_definition_is_reported(norm):
    message = errors_of(schema.vm_definition, "Web1", {"home": "hostC", "memory": "lots", "disc": "0.5M",
                                                      "state": "up", "cdrom": "x", "colour": "red"}, norm)
    keys = [line.split(": ")[1] for line in message.splitlines()]
    assert keys == ["name", "definition", "home", "memory", "state", "cdrom", "disc"]
    assert all(line.startswith("vm 'Web1': ") for line in message.splitlines())


def test_null_optional_values_take_their_defaults(norm):
    result = schema.vm_definition("web1", {**VM, "vcpus": None, "ip": None, "state": None, "suppress": None,
                                           "hypervisor_options": {"kernel": None}, "cdrom": None}, norm)
    assert (result["vcpus"], result["state"], result["suppress"]) == (1, "running", False)
    assert result["hypervisor_options"] == {}


def test_a_definition_that_is_not_a_mapping(norm):
    assert "vm 'web1': definition: must be a mapping" in errors_of(schema.vm_definition, "web1", "x", norm)


def test_fixed_values_need_a_pool():
    no_pool = schema.settings({"pair": PAIR})
    message = errors_of(schema.vm_definition, "web1", {**VM, "ip": "203.0.113.9"}, no_pool)
    assert "vm 'web1': ip: '203.0.113.9' cannot be used: no pool (pool.cidr) is configured" in message


def test_fixed_mac_need_not_use_the_prefix(norm):
    result = schema.vm_definition("web1", {**VM, "mac": "00:16:3E:00:00:01"}, norm)
    assert result["mac"] == "00:16:3e:00:00:01"


# --- vms -------------------------------------------------------------------------------------


def test_vms_returns_every_normalized_definition():
    result = schema.vms(pillar(vms={"web2": VM, "web1": {**VM, "disc": 2048}}))
    assert list(result) == ["web1", "web2"]
    assert result["web1"]["disc_mib"] == 2048 and result["web2"]["disc_mib"] == 10240


def test_vms_reports_the_problems_of_every_vm():
    message = errors_of(schema.vms, pillar(vms={
        "a;b": VM, "ok": VM, "web1": {**VM, "memory": "lots"}, "web2": {**VM, "ip": "10.0.0.1"},
    }))
    assert "vm 'a;b': name:" in message
    assert "vm 'web1': memory:" in message
    assert "vm 'web2': ip: '10.0.0.1' is outside the pool" in message
    assert "'ok'" not in message


def test_vms_with_bad_settings_reports_the_settings():
    assert "domain_type:" in errors_of(schema.vms, pillar(domain_type="xen", vms={"web1": VM}))


@pytest.mark.parametrize("value", [None, {}])
def test_no_vms(value):
    assert schema.vms(pillar(vms=value)) == {}


# --- record, dump_record, load_record --------------------------------------------------------


def test_record_follows_the_data_model(norm):
    definition = schema.vm_definition("web1", {**VM, "home": "hostB", "cdrom": "/srv/x.iso"}, norm)
    result = schema.record("web1", definition, ALLOC, norm)
    assert list(result) == list(schema.RECORD_KEYS)
    assert result == {
        "name": "web1", "home": "hostB", "peer": "hostA", "memory": 512, "vcpus": 1, "disc_mib": 10240,
        "ip": "203.0.113.5", "prefix": 24, "gateway": "203.0.113.1", "mac": "52:54:00:00:00:01",
        "bridge": "br0", "drbd_port": 7800, "drbd_minor": 0, "vnc_display": 1, "state": "running",
        "suppress": False, "domain_type": "kvm", "hypervisor_options": {}, "cdrom": "/srv/x.iso",
        "hosts": {
            "hostA": {"admin_ip": "192.0.2.11", "replication_ip": "198.51.100.11", "vg": "there"},
            "hostB": {"admin_ip": "192.0.2.12", "replication_ip": "198.51.100.12", "vg": "here"},
        },
    }


def test_record_fixed_values_and_bridge_win(norm):
    definition = schema.vm_definition("web1", {**VM, "ip": "203.0.113.9", "mac": "02:00:00:00:00:AA",
                                               "drbd_port": 7900, "vnc_display": 9, "bridge": "br1"}, norm)
    result = schema.record("web1", definition, ALLOC, norm)
    assert (result["ip"], result["mac"], result["drbd_port"], result["vnc_display"], result["bridge"]) == (
        "203.0.113.9", "02:00:00:00:00:aa", 7900, 9, "br1")
    assert result["drbd_minor"] == 0


def test_record_uses_the_configured_volume_groups():
    norm = schema.settings(pillar(volume_groups=["vg_home", "vg_peer"]))
    result = schema.record("web1", schema.vm_definition("web1", VM, norm), ALLOC, norm)
    assert {m: h["vg"] for m, h in result["hosts"].items()} == {"hostA": "vg_home", "hostB": "vg_peer"}


def test_record_needs_a_full_allocation_and_a_pool(norm):
    definition = schema.vm_definition("web1", VM, norm)
    message = errors_of(schema.record, "web1", definition, {"ip": "203.0.113.5"}, norm)
    assert "vm 'web1': alloc: no mac, drbd_port, drbd_minor, vnc_display allocated" in message
    no_pool = schema.settings({"pair": PAIR})
    assert "vm 'web1': pool: no pool" in errors_of(schema.record, "web1", definition, ALLOC, no_pool)
    assert "vm 'web1': home: 'hostC'" in errors_of(schema.record, "web1", {**definition, "home": "hostC"},
                                                   ALLOC, norm)
    assert "name:" in errors_of(schema.record, "../x", definition, ALLOC, norm)


@pytest.fixture(scope="module")
def rec(norm):
    definition = schema.vm_definition("web1", {**VM, "hypervisor_options": {
        "kernel": "/boot/vmlinuz", "cmdline": 'console=ttyS0 quiet "x" \'y\' # z: w'}}, norm)
    return schema.record("web1", definition, ALLOC, norm)


def test_dump_record_is_canonical_yaml(rec):
    text = schema.dump_record(rec)
    assert text.endswith("\n") and not text.endswith("\n\n")
    lines = text.splitlines()
    assert '"mac": "52:54:00:00:00:01"' in lines
    assert '"ip": "203.0.113.5"' in lines
    assert '"memory": 512' in lines and '"suppress": false' in lines and '"cdrom": null' in lines
    top = [line.split(":")[0].strip('"') for line in lines if not line.startswith(" ")]
    assert top == sorted(schema.RECORD_KEYS)
    assert "&" not in text and "*" not in text


def test_dump_record_round_trips(rec):
    text = schema.dump_record(rec)
    assert schema.load_record(text) == rec
    assert schema.load_record(text, strict=True) == rec
    assert schema.dump_record(schema.load_record(text)) == text
    # A YAML 1.1 loader reads every MAC and address back as a string, never a base-60 number.
    loaded = yaml.load(text, Loader=yaml.SafeLoader)
    assert loaded["mac"] == "52:54:00:00:00:01" and loaded["ip"] == "203.0.113.5"


def test_dump_record_does_not_depend_on_key_order_or_shared_objects(rec):
    shuffled = dict(reversed(list(rec.items())))
    shuffled["hosts"] = dict(reversed(list(rec["hosts"].items())))
    host = {"admin_ip": "192.0.2.11", "replication_ip": "198.51.100.11", "vg": "here"}
    shared = {**rec, "hosts": {"hostA": host, "hostB": host}}
    assert schema.dump_record(shuffled) == schema.dump_record(rec)
    assert "&" not in schema.dump_record(shared)


def test_dump_record_refuses_a_bad_record(rec):
    assert "vm 'web1': record: missing key(s) ['hosts']" in errors_of(
        schema.dump_record, {k: v for k, v in rec.items() if k != "hosts"})
    assert "vm 'web1': memory: must be a whole number, got '512'" in errors_of(
        schema.dump_record, {**rec, "memory": "512"})


def test_load_record_rejects_hand_edits(rec):
    text = schema.dump_record(rec)
    unquoted = text.replace('"mac": "52:54:00:00:00:01"', "mac: 52:54:00:00:00:01")
    assert "vm 'web1': mac: must be a string, got 41135040001" in errors_of(schema.load_record, unquoted)
    edited = text.replace('"vcpus": 1', "vcpus: 1")
    assert schema.load_record(edited)["vcpus"] == 1
    assert "record: not in canonical form" in errors_of(schema.load_record, edited, True)
    assert "unknown key(s) ['extra']" in errors_of(schema.load_record, text + '"extra": 1\n')
    assert "record: must be a mapping" in errors_of(schema.load_record, "- 1\n")
    assert "record: not valid YAML" in errors_of(schema.load_record, '"a": [\n')
    assert "vm 'web1': hosts: must map two minion ids" in errors_of(
        schema.load_record, text.replace('"vg": "here"', '"vg": 1'))


MAC_OCTETS = st.integers(0, 255).map(lambda o: f"{o:02x}")
# YAML's special characters, escapes and non-ASCII; drawn from a list, as st.text() would cache
# Hypothesis' Unicode table in the work tree.
ALPHABET = " azAZ09:#-?&*!|>'\"%@`{}[],\\/\t\n\x00\x85\u00e9\u2028\u2603\U0001f600"
TEXT = st.lists(st.sampled_from(ALPHABET), max_size=30).map("".join)


@settings(max_examples=60, database=None, deadline=None)
@given(
    mac=st.lists(MAC_OCTETS, min_size=3, max_size=3).map(lambda o: "52:54:00:" + ":".join(o)),
    ip=st.ip_addresses(v=4).map(str),
    numbers=st.lists(st.integers(0, 2**40), min_size=8, max_size=8),
    cmdline=TEXT,
    cdrom=st.none() | TEXT,
    suppress=st.booleans(),
)
def test_any_record_round_trips_byte_for_byte(rec, mac, ip, numbers, cmdline, cdrom, suppress):
    keys = ("memory", "vcpus", "disc_mib", "prefix", "drbd_port", "drbd_minor", "vnc_display")
    changed = {**rec, **dict(zip(keys, numbers, strict=False)), "mac": mac, "ip": ip, "gateway": ip,
               "cdrom": cdrom, "suppress": suppress, "hypervisor_options": {"cmdline": cmdline}}
    text = schema.dump_record(changed)
    assert schema.load_record(text, strict=True) == changed
    assert text.isascii()


def test_schema_is_pure():
    source = Path(schema.__file__).read_text()
    for word in ("open(", "subprocess", "os.", "socket", "__salt__"):
        assert word not in source
