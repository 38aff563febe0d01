"""_pillar/pairvm_registry.py: the master's registry served as pillar ``pairvm``."""

import json

import pytest

from tests.unit.conftest import load

registry_pillar = load("_pillar/pairvm_registry.py", "pairvm_registry_pillar")

ALLOC_1 = {"ip": "10.79.0.5", "mac": "52:54:00:00:00:01", "drbd_port": 7800, "drbd_minor": 0,
           "vnc_display": 1}
ALLOC_2 = {"ip": "10.79.0.6", "mac": "52:54:00:00:00:02", "drbd_port": 7801, "drbd_minor": 1,
           "vnc_display": 2}
CLI_DEFINITION = {
    "home": "hostB", "memory": 512, "vcpus": 1, "disc_mib": 2048, "ip": None, "mac": None, "bridge": None,
    "drbd_port": None, "vnc_display": None, "state": "stopped", "suppress": False,
    "hypervisor_options": {}, "cdrom": None,
}


@pytest.fixture
def cachedir(tmp_path):
    registry_pillar.__opts__ = {"cachedir": str(tmp_path)}
    return tmp_path


def test_without_a_registry_there_is_nothing_to_add(cachedir):
    assert registry_pillar.ext_pillar("hostA", {}) == {}
    assert not (cachedir / "pairvm").exists()


def test_allocations_of_all_vms_and_definitions_of_cli_created_ones(cachedir):
    (cachedir / "pairvm").mkdir()
    (cachedir / "pairvm" / "registry.json").write_text(json.dumps({"vms": {
        "vm1": {"definition": None, "alloc": ALLOC_1, "cdrom": {"path": "/srv/a.iso", "pillar": None}},
        "web": {"definition": CLI_DEFINITION, "alloc": ALLOC_2},
    }}))
    pillar = registry_pillar.ext_pillar("hostA", {"pairvm": {"vms": {"vm1": {"home": "hostA"}}}})
    assert pillar == {"pairvm": {
        "allocations": {"vm1": ALLOC_1, "web": ALLOC_2},
        "vms": {"web": CLI_DEFINITION},
        "cdroms": {"vm1": {"path": "/srv/a.iso", "pillar": None}},
    }}
    # every minion gets the same registry
    assert registry_pillar.ext_pillar("hostB", {}) == pillar


def test_an_empty_registry_adds_empty_maps(cachedir):
    (cachedir / "pairvm").mkdir()
    (cachedir / "pairvm" / "registry.json").write_text(json.dumps({"vms": {}}))
    assert registry_pillar.ext_pillar("hostA", {}) == {"pairvm": {"allocations": {}, "vms": {}, "cdroms": {}}}
