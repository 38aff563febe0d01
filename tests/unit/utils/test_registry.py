"""pairvmlib.registry: a registry and a DRBD secret per pair, under the master's cachedir."""

import json
import os
import stat

import pytest

from pairvmlib import registry
from pairvmlib.errors import Failed, Invalid

ENTRY = {"definition": None, "alloc": {"ip": "10.79.0.5"}}


@pytest.fixture
def opts(tmp_path):
    return {"cachedir": str(tmp_path)}


def path(opts, *parts):
    return os.path.join(opts["cachedir"], "pairvm", *parts)


def mode(where):
    return stat.S_IMODE(os.stat(where).st_mode)


def save(opts, pair, vms):
    with registry.locked(opts, pair) as box:
        box["registry"] = {"pair": {"name": pair, "hosts": {}, "pool": None}, "vms": vms}


def test_a_pair_without_a_registry_reads_empty(opts):
    assert registry.read(opts, "one") == {"vms": {}}
    assert registry.pair_names(opts) == [] and registry.pairs(opts) == {}
    assert registry.exists(opts, "one") is False


def test_locked_saves_root_only_and_only_what_changed(opts):
    save(opts, "one", {"vm1": ENTRY})
    file = path(opts, "pairs", "one", "registry.json")
    assert json.loads(open(file).read())["vms"] == {"vm1": ENTRY}
    assert (mode(file), mode(os.path.dirname(file)), mode(path(opts))) == (0o600, 0o700, 0o700)
    inode = os.stat(file).st_ino
    with registry.locked(opts, "one") as box:
        assert box["registry"]["vms"] == {"vm1": ENTRY} and box["others"] == {}
    assert os.stat(file).st_ino == inode  # not rewritten
    save(opts, "two", {"db1": ENTRY})
    with registry.locked(opts, "two") as box:
        assert list(box["others"]) == ["one"] and box["pair"] == "two"
    assert registry.pair_names(opts) == ["one", "two"]


def test_a_leftover_of_a_killed_save_never_makes_a_registry_or_secret_readable(opts):
    pair_dir = path(opts, "pairs", "one")
    os.makedirs(pair_dir)
    for name in ("registry.json.tmp", "drbd-secret.tmp"):
        with open(os.path.join(pair_dir, name), "w") as fh:
            fh.write("left by a killed run")
        os.chmod(os.path.join(pair_dir, name), 0o644)
    save(opts, "one", {})
    registry.ensure_secret(opts, "one")
    for name in ("registry.json", "drbd-secret"):
        assert mode(os.path.join(pair_dir, name)) == 0o600


def test_without_a_pair_name_the_only_pair_or_a_refusal(opts):
    assert registry.resolve(opts) == "default"
    save(opts, "one", {})
    assert registry.resolve(opts) == "one" and registry.read(opts) == registry.read(opts, "one")
    save(opts, "two", {})
    with pytest.raises(Failed, match=r"this master has 2 pairs \(one, two\): name one with pair=NAME"):
        registry.read(opts)
    with pytest.raises(Invalid, match="pair: must be 1 to 32 characters"):
        registry.read(opts, "../one")


def test_an_unreadable_registry_names_its_file(opts):
    save(opts, "one", {})
    with open(path(opts, "pairs", "one", "registry.json"), "w") as fh:
        fh.write("{not json")
    with pytest.raises(Failed, match=r"cannot read the registry .*pairs/one/registry.json"):
        registry.read(opts, "one")


def test_a_secret_is_made_once_root_only(opts):
    assert registry.secret(opts, "one") is None
    made = registry.ensure_secret(opts, "one")
    assert len(made) == 43 and registry.secret(opts, "one") == made
    assert mode(path(opts, "pairs", "one", "drbd-secret")) == 0o600
    assert registry.ensure_secret(opts, "one") == made
    assert registry.ensure_secret(opts, "two") != made


def test_as_pillar_adds_the_secret_only_when_given():
    saved = {"vms": {"vm1": ENTRY, "web": {"definition": {"home": "hostA"}, "alloc": {"ip": "x"}}}}
    allocations = {"vm1": ENTRY["alloc"], "web": {"ip": "x"}}
    assert registry.as_pillar(saved) == {"pairvm": {"allocations": allocations,
                                                    "vms": {"web": {"home": "hostA"}},
                                                    "resized": {}, "cdroms": {}, "homes": {}}}
    assert registry.as_pillar(saved, "s")["pairvm"]["drbd_options"] == {"shared_secret": "s"}


def test_the_registry_of_before_pairs_is_pair_defaults_and_moves_at_its_save(opts):
    os.makedirs(path(opts))
    with open(path(opts, "registry.json"), "w") as fh:
        json.dump({"vms": {"vm1": ENTRY}}, fh)
    assert registry.pair_names(opts) == ["default"] and registry.read(opts)["vms"] == {"vm1": ENTRY}
    with registry.locked(opts) as box:
        assert box["pair"] == "default" and box["registry"]["vms"] == {"vm1": ENTRY}
    assert not os.path.exists(path(opts, "registry.json"))
    assert os.path.exists(path(opts, "registry.json.before-pairs"))
    assert registry.read(opts, "default")["vms"] == {"vm1": ENTRY}


def test_with_home_keeps_a_swapped_home_beside_the_allocation_or_in_the_definition():
    saved = {"vms": {"vm1": {"definition": None, "alloc": {}},
                     "web": {"definition": {"home": "hostA"}, "alloc": {}}}}
    moved = registry.with_home(saved, "vm1", "hostB", "hostA")
    assert moved["vms"]["vm1"] == {"definition": None, "alloc": {}, "home": "hostB"}
    assert saved["vms"]["vm1"] == {"definition": None, "alloc": {}}  # a copy
    back = registry.with_home(moved, "vm1", "hostA", "hostA")  # pillar gives it: nothing to keep
    assert back["vms"]["vm1"] == {"definition": None, "alloc": {}}
    assert registry.with_home(saved, "web", "hostB", None)["vms"]["web"] == {"definition": {"home": "hostB"},
                                                                            "alloc": {}}
    with pytest.raises(Failed, match="VM nope has no entry in the registry"):
        registry.with_home(saved, "nope", "hostB", "hostA")


def test_with_swap_records_a_swap_begun_and_forgets_it():
    saved = {"vms": {"vm1": {"definition": None, "alloc": {}}}}
    begun = registry.with_swap(saved, "vm1", "hostB")
    assert begun["vms"]["vm1"]["swap"] == {"to": "hostB"} and "swap" not in saved["vms"]["vm1"]
    assert registry.with_swap(begun, "vm1", None) == saved
    assert registry.as_pillar(begun)["pairvm"]["homes"] == {}  # only the runner reads it
