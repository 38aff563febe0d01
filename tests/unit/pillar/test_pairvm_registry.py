"""_pillar/pairvm_registry.py: a pair's registry and secret served to that pair's hosts only."""

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
HOSTS = {"hostA": {"admin_ip": "10.77.0.11", "replication_ip": "10.78.0.11"},
         "hostB": {"admin_ip": "10.77.0.12", "replication_ip": "10.78.0.12"}}
HOSTS_TWO = {"hostC": {"admin_ip": "10.77.0.13", "replication_ip": "10.78.0.13"},
             "hostD": {"admin_ip": "10.77.0.14", "replication_ip": "10.78.0.14"}}
# what a registry without VMs gives
EMPTY = {"allocations": {}, "vms": {}, "resized": {}, "cdroms": {}, "homes": {}}


@pytest.fixture
def cachedir(tmp_path):
    registry_pillar.__opts__ = {"cachedir": str(tmp_path)}
    return tmp_path


def save(cachedir, pair, hosts, vms, secret=None):
    path = cachedir / "pairvm" / "pairs" / pair
    path.mkdir(parents=True)
    (path / "registry.json").write_text(json.dumps({"pair": {"name": pair, "hosts": hosts, "pool": None},
                                                    "vms": vms}))
    if secret:
        (path / "drbd-secret").write_text(secret + "\n")


def pillar_of(hosts, pair=None, **more):
    pairvm = {"pair": hosts, **more}
    if pair:
        pairvm["pair_name"] = pair
    return {"pairvm": pairvm}


def test_without_a_registry_there_is_nothing_to_add(cachedir):
    assert registry_pillar.ext_pillar("hostA", pillar_of(HOSTS)) == {}
    assert not (cachedir / "pairvm").exists()


def test_a_pair_host_gets_its_pairs_allocations_definitions_and_secret(cachedir):
    save(cachedir, "default", HOSTS, {"vm1": {"definition": None, "alloc": ALLOC_1, "disc_mib": 3072,
                                               "cdrom": {"path": "/srv/a.iso", "pillar": None},
                                               "home": "hostB", "swap": {"to": "hostB"}},
                                      "web": {"definition": CLI_DEFINITION, "alloc": ALLOC_2}}, "s3cr3t")
    pillar = registry_pillar.ext_pillar("hostA", pillar_of(HOSTS, vms={"vm1": {"home": "hostA"}}))
    assert pillar == {"pairvm": {
        "allocations": {"vm1": ALLOC_1, "web": ALLOC_2},
        "vms": {"web": CLI_DEFINITION},
        "resized": {"vm1": 3072},  # salt-run pairvm.resize grew the pillar-defined vm1
        "cdroms": {"vm1": {"path": "/srv/a.iso", "pillar": None}},  # salt-run pairvm.cdrom gave it a CD
        "homes": {"vm1": "hostB"},  # salt-run pairvm.swap moved it (its swap marker is not served)
        "drbd_options": {"shared_secret": "s3cr3t"},
    }}
    assert registry_pillar.ext_pillar("hostB", pillar_of(HOSTS)) == pillar


def test_each_pair_host_gets_its_own_pair_only(cachedir):
    save(cachedir, "one", HOSTS, {"vm1": {"definition": None, "alloc": ALLOC_1}}, "secret-one")
    save(cachedir, "two", HOSTS_TWO, {"db1": {"definition": CLI_DEFINITION, "alloc": ALLOC_1}}, "secret-two")
    two = registry_pillar.ext_pillar("hostC", pillar_of(HOSTS_TWO, "two"))
    assert two["pairvm"]["allocations"] == {"db1": ALLOC_1}
    assert two["pairvm"]["drbd_options"] == {"shared_secret": "secret-two"}
    text = json.dumps(two)
    assert "vm1" not in text and "secret-one" not in text
    assert registry_pillar.ext_pillar("hostA", pillar_of(HOSTS, "one"))["pairvm"]["drbd_options"] == \
        {"shared_secret": "secret-one"}


@pytest.mark.parametrize("minion, pillar", [
    ("hostA", {}),  # no pairvm pillar: not a pair host
    ("master", pillar_of(HOSTS)),  # a pillar naming a pair the minion is not in
    ("hostA", pillar_of(HOSTS_TWO, "two")),  # the same
    ("hostC", pillar_of(HOSTS_TWO, "one")),  # a pillar claiming pair one, whose registry is of hostA, hostB
    ("hostA", pillar_of(HOSTS, "../one")),  # not a pair name
    ("hostA", pillar_of(HOSTS, "three")),  # a pair without a registry
    ("hostA", {"pairvm": {"pair": ["hostA"]}}),
])
def test_nothing_for_a_minion_that_is_not_a_host_of_the_registered_pair(cachedir, minion, pillar):
    save(cachedir, "one", HOSTS, {"vm1": {"definition": None, "alloc": ALLOC_1}}, "secret-one")
    save(cachedir, "two", HOSTS_TWO, {}, "secret-two")
    assert registry_pillar.ext_pillar(minion, pillar) == {}


def test_nothing_for_a_minion_outside_the_pair_of_a_registry_that_recorded_no_hosts(cachedir):
    """A registry from before pairs records no hosts: the minion's own pillar must name it."""
    (cachedir / "pairvm").mkdir()
    (cachedir / "pairvm" / "registry.json").write_text(json.dumps({"vms": {"vm1": {"alloc": ALLOC_1}}}))
    assert registry_pillar.ext_pillar("hostA", pillar_of(HOSTS))["pairvm"]["allocations"] == {"vm1": ALLOC_1}
    assert registry_pillar.ext_pillar("master", pillar_of(HOSTS)) == {}


def test_a_secret_pillar_gives_is_not_replaced(cachedir):
    save(cachedir, "default", HOSTS, {}, "generated")
    pillar = pillar_of(HOSTS, drbd_options={"shared_secret": "mine", "resync_rate": "100M"})
    assert registry_pillar.ext_pillar("hostA", pillar) == {"pairvm": EMPTY}


def test_an_empty_registry_without_a_secret_adds_empty_maps(cachedir):
    save(cachedir, "default", HOSTS, {})
    assert registry_pillar.ext_pillar("hostA", pillar_of(HOSTS)) == {"pairvm": EMPTY}


def test_one_pairs_registry_is_read_however_many_pairs_there_are(cachedir, monkeypatch):
    for number in range(20):
        hosts = {f"h{number}a": HOSTS["hostA"], f"h{number}b": HOSTS["hostB"]}
        save(cachedir, f"p{number}", hosts, {}, f"secret{number}")
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open",
                        lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k))
    pillar = registry_pillar.ext_pillar("h7b", pillar_of({"h7a": {}, "h7b": {}}, "p7"))
    assert pillar["pairvm"]["drbd_options"] == {"shared_secret": "secret7"}
    assert sorted(p.rsplit("/", 2)[1:] for p in opened) == [["p7", "drbd-secret"], ["p7", "registry.json"]]
