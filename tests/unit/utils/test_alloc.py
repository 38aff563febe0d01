"""_utils/pairvm_alloc.py: the master's allocator of IP, MAC, DRBD port/minor and VNC display."""

import copy
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pairvmlib import alloc, schema
from pairvmlib.errors import Invalid

PAIR = {
    "hostA": {"admin_ip": "192.0.2.11", "replication_ip": "198.51.100.11"},
    "hostB": {"admin_ip": "192.0.2.12", "replication_ip": "198.51.100.12"},
}
# /28: hosts .1-.14; .1 gateway, .1-.4 reserve_first, .6 reserved: free .5 .7 .8 .9 .10 .11 .12 .13 .14
SETTINGS = schema.settings({
    "pair": PAIR,
    "pool": {"cidr": "203.0.113.0/28", "gateway": "203.0.113.1", "reserved": ["203.0.113.6"]},
    "drbd": {"port_range": [7800, 7809], "minor_range": [0, 9]},
    "vnc": {"display_range": [1, 10]},
    "memory_cap": 8192,
})
FREE_IPS = [f"203.0.113.{n}" for n in (5, 7, 8, 9, 10, 11, 12, 13, 14)]
KEYS = ("ip", "mac", "drbd_port", "drbd_minor", "vnc_display")


def vm(**fixed):
    """A normalized definition with the given fixed values."""
    return schema.vm_definition("x", {"home": "hostA", "memory": 256, "disc": "1G", **fixed}, SETTINGS)


def allocs(registry):
    return {name: entry["alloc"] for name, entry in registry["vms"].items()}


def errors_of(func, *args):
    with pytest.raises(Invalid) as info:
        func(*args)
    return str(info.value)


# --- allocate --------------------------------------------------------------------------------


@pytest.mark.parametrize("empty", [{}, {"vms": {}}, None])
def test_first_vm_takes_the_lowest_free_values(empty):
    result = alloc.allocate(SETTINGS, {"web1": vm()}, empty)
    assert result == {"vms": {"web1": {"definition": None, "alloc": {
        "ip": "203.0.113.5", "mac": "52:54:00:00:00:01", "drbd_port": 7800, "drbd_minor": 0,
        "vnc_display": 1,
    }}}}


def test_vms_are_allocated_in_name_order_skipping_excluded_addresses():
    result = alloc.allocate(SETTINGS, {"c": vm(), "a": vm(), "b": vm()}, {})
    assert list(result["vms"]) == ["a", "b", "c"]
    assert [a["ip"] for a in allocs(result).values()] == FREE_IPS[:3]
    assert [a["mac"] for a in allocs(result).values()] == [f"52:54:00:00:00:0{n}" for n in (1, 2, 3)]
    assert [a["drbd_minor"] for a in allocs(result).values()] == [0, 1, 2]


def test_the_mac_counts_up_under_the_prefix():
    other = schema.settings({
        "pair": PAIR, "pool": {"cidr": "203.0.112.0/23", "gateway": "203.0.112.1"}, "mac_prefix": "0A:00:00",
        "drbd": {"port_range": [7000, 7299], "minor_range": [0, 299]}, "vnc": {"display_range": [1, 300]},
    })
    definitions = {f"v{n:03d}": vm() for n in range(260)}
    result = alloc.allocate(other, definitions, {})
    assert result["vms"]["v000"]["alloc"]["mac"] == "0a:00:00:00:00:01"
    assert result["vms"]["v255"]["alloc"]["mac"] == "0a:00:00:00:01:00"
    assert result["vms"]["v259"]["alloc"]["mac"] == "0a:00:00:00:01:04"


def test_fixed_values_are_used_and_claimed_before_any_lowest_free():
    definitions = {"a": vm(), "z": vm(ip="203.0.113.5", mac="02:00:00:00:00:01", drbd_port=7800,
                                      vnc_display=1)}
    result = allocs(alloc.allocate(SETTINGS, definitions, {}))
    assert result["z"] == {"ip": "203.0.113.5", "mac": "02:00:00:00:00:01", "drbd_port": 7800,
                           "drbd_minor": 1, "vnc_display": 1}
    assert result["a"] == {"ip": "203.0.113.7", "mac": "52:54:00:00:00:01", "drbd_port": 7801,
                           "drbd_minor": 0, "vnc_display": 2}


def test_existing_allocations_are_kept_and_missing_keys_filled():
    registry = {"vms": {"old": {"definition": {"home": "hostB"}, "alloc": {
        "ip": "203.0.113.9", "mac": "52:54:00:00:00:07", "drbd_port": 7805, "drbd_minor": 4}}}}
    result = alloc.allocate(SETTINGS, {"old": vm(), "new": vm()}, registry)
    assert result["vms"]["old"] == {"definition": {"home": "hostB"}, "alloc": {
        "ip": "203.0.113.9", "mac": "52:54:00:00:00:07", "drbd_port": 7805, "drbd_minor": 4,
        "vnc_display": 2}}
    assert allocs(result)["new"] == {"ip": "203.0.113.5", "mac": "52:54:00:00:00:01", "drbd_port": 7800,
                                     "drbd_minor": 0, "vnc_display": 1}


def test_allocate_leaves_its_arguments_alone_and_returns_json():
    definitions = {"a": vm(), "b": vm(ip="203.0.113.9")}
    registry = {"vms": {"c": {"definition": None, "alloc": {"ip": "203.0.113.5"}}}, "version": 1}
    before = copy.deepcopy((definitions, registry))
    result = alloc.allocate(SETTINGS, definitions, registry)
    assert (definitions, registry) == before
    assert result["version"] == 1
    assert json.loads(json.dumps(result)) == result
    result["vms"]["c"]["alloc"]["ip"] = "x"
    assert registry["vms"]["c"]["alloc"]["ip"] == "203.0.113.5"


def test_vms_only_in_the_registry_are_kept_and_their_values_stay_taken():
    first = alloc.allocate(SETTINGS, {"gone": vm(), "kept": vm()}, {})
    result = alloc.allocate(SETTINGS, {"kept": vm(), "new": vm()}, first)
    assert result["vms"]["gone"] == first["vms"]["gone"]
    assert allocs(result)["new"]["ip"] == FREE_IPS[2]


def test_a_fixed_value_taken_by_another_vm_names_both():
    first = alloc.allocate(SETTINGS, {"web1": vm()}, {})
    message = errors_of(alloc.allocate, SETTINGS, {"web1": vm(), "web2": vm(ip="203.0.113.5")}, first)
    assert message == "vm 'web2': ip: '203.0.113.5' is already allocated to vm 'web1'"


def test_two_vms_fixing_the_same_value_name_both():
    message = errors_of(alloc.allocate, SETTINGS, {"a": vm(mac="02:00:00:00:00:01"),
                                                   "b": vm(mac="02:00:00:00:00:01", drbd_port=7801),
                                                   "c": vm(drbd_port=7801)}, {})
    assert message.splitlines() == [
        "vm 'b': mac: '02:00:00:00:00:01' is already fixed for vm 'a'",
        "vm 'c': drbd_port: 7801 is already fixed for vm 'b'",
    ]


def test_mac_collisions_ignore_case():
    first = alloc.allocate(SETTINGS, {"a": vm(mac="02:00:00:00:00:AA")}, {})
    assert first["vms"]["a"]["alloc"]["mac"] == "02:00:00:00:00:aa"
    registry = {"vms": {"a": {"definition": None, "alloc": {**first["vms"]["a"]["alloc"],
                                                            "mac": "02:00:00:00:00:AA"}}}}
    message = errors_of(alloc.allocate, SETTINGS, {"a": vm(), "b": vm(mac="02:00:00:00:00:aa")}, registry)
    assert "vm 'b': mac: '02:00:00:00:00:aa' is already allocated to vm 'a'" in message


def test_a_fixed_value_held_by_a_vm_no_longer_defined_says_release_it():
    first = alloc.allocate(SETTINGS, {"gone": vm()}, {})
    message = errors_of(alloc.allocate, SETTINGS, {"web1": vm(drbd_port=7800)}, first)
    assert message == ("vm 'web1': drbd_port: 7800 is already allocated to vm 'gone' "
                       "(no longer defined: release it first)")


def test_an_allocation_never_changes_to_follow_a_new_fixed_value():
    first = alloc.allocate(SETTINGS, {"web1": vm()}, {})
    message = errors_of(alloc.allocate, SETTINGS, {"web1": vm(ip="203.0.113.9")}, first)
    assert message.startswith("vm 'web1': ip: the definition fixes '203.0.113.9' but the VM already has "
                              "'203.0.113.5'; an allocation never changes")
    assert alloc.allocate(SETTINGS, {"web1": vm(ip="203.0.113.5")}, first) == first


def test_an_allocation_that_settings_no_longer_allow_is_an_error():
    first = alloc.allocate(SETTINGS, {"web1": vm()}, {})
    tighter = copy.deepcopy(SETTINGS)
    tighter["pool"]["reserved"].append("203.0.113.5")
    tighter["drbd"]["port_range"] = [7801, 7809]
    message = errors_of(alloc.allocate, tighter, {"web1": vm()}, first)
    assert message.splitlines() == [
        "vm 'web1': ip: the allocated '203.0.113.5' is reserved (pool.reserved); an allocation never "
        "changes: fix the settings, or destroy and re-create the VM",
        "vm 'web1': drbd_port: the allocated 7800 is outside drbd.port_range [7801, 7809]; an allocation "
        "never changes: fix the settings, or destroy and re-create the VM",
    ]


def test_fixed_values_are_checked_against_the_settings_again():
    stale = {**vm(), "ip": "203.0.113.1", "vnc_display": 11}
    message = errors_of(alloc.allocate, SETTINGS, {"web1": stale}, {})
    assert message.splitlines() == [
        "vm 'web1': ip: the fixed '203.0.113.1' is the gateway",
        "vm 'web1': vnc_display: the fixed 11 is outside vnc.display_range [1, 10]",
    ]


ROOMY = {**SETTINGS, "memory_cap": 0,
         "pool": {"cidr": "203.0.113.0/24", "gateway": "203.0.113.1", "reserve_first": 4, "reserved": []},
         "drbd": {"port_range": [7800, 7899], "minor_range": [0, 99]}, "vnc": {"display_range": [1, 99]}}


@pytest.mark.parametrize(
    "override, message",
    [
        ({"pool": SETTINGS["pool"]},
         "ip: no free address left in the pool 203.0.113.0/28 (the network and broadcast addresses, the "
         "gateway, the first 4 host addresses and pool.reserved are never given)"),
        ({"drbd": {"port_range": [7800, 7808], "minor_range": [0, 99]}},
         "drbd_port: no free DRBD port left in drbd.port_range [7800, 7808]"),
        ({"drbd": {"port_range": [7800, 7899], "minor_range": [10, 18]}},
         "drbd_minor: no free DRBD minor left in drbd.minor_range [10, 18]"),
        ({"vnc": {"display_range": [0, 8]}},
         "vnc_display: no free VNC display left in vnc.display_range [0, 8]"),
    ],
)
def test_an_exhausted_pool_names_the_resource(override, message):
    limited = {**ROOMY, **override}
    nine = {f"v{n}": vm() for n in range(9)}
    assert len(alloc.allocate(limited, nine, {})["vms"]) == 9
    assert errors_of(alloc.allocate, limited, {**nine, "v9": vm()}, {}) == f"vm 'v9': {message}"


def test_an_exhausted_mac_prefix(monkeypatch):
    monkeypatch.setattr(alloc, "MAC_SUFFIXES", range(1, 3))
    message = errors_of(alloc.allocate, SETTINGS, {"a": vm(), "b": vm(), "c": vm(), "d": vm()}, {})
    assert message.splitlines() == [
        "vm 'c': mac: no free MAC address left under mac_prefix 52:54:00",
        "vm 'd': mac: no free MAC address left under mac_prefix 52:54:00",
    ]


def test_no_pool_no_address():
    no_pool = {**SETTINGS, "pool": None}
    message = errors_of(alloc.allocate, no_pool, {"web1": vm()}, {})
    assert message == "vm 'web1': ip: no pool (pool.cidr) is configured to take an address from"


def test_the_memory_cap_names_total_cap_and_the_new_vms():
    first = alloc.allocate(SETTINGS, {"old": vm(memory=6144)}, {})
    message = errors_of(alloc.allocate, SETTINGS, {"old": vm(memory=6144), "big": vm(memory=2048),
                                                   "tiny": vm(memory=16)}, first)
    assert message == ("memory_cap: the VMs' memory totals 8208 MiB, over the cap of 8192 MiB; "
                       "new VM(s) pushing it over: vm 'big' (2048 MiB), vm 'tiny' (16 MiB)")


def test_the_memory_cap_counts_grown_vms_too():
    first = alloc.allocate(SETTINGS, {"old": vm(memory=6144)}, {})
    message = errors_of(alloc.allocate, SETTINGS, {"old": vm(memory=9000)}, first)
    assert message.endswith("new VM(s) pushing it over: none (the memory of VMs already allocated grew)")


def test_the_memory_cap_may_be_reached_or_switched_off():
    assert alloc.allocate(SETTINGS, {"a": vm(memory=8000), "b": vm(memory=192)}, {})
    assert alloc.allocate({**SETTINGS, "memory_cap": 0}, {"a": vm(memory=10**6)}, {})


def test_every_problem_is_reported_and_nothing_returned():
    first = alloc.allocate(SETTINGS, {"a": vm()}, {})
    message = errors_of(alloc.allocate, SETTINGS, {"a": vm(memory=9000), "b": vm(ip="203.0.113.5"),
                                                   "c": vm(vnc_display=1)}, first)
    assert len(message.splitlines()) == 3
    assert "memory_cap:" in message and "vm 'b': ip:" in message and "vm 'c': vnc_display:" in message


def test_a_registry_with_collisions_is_refused():
    registry = {"vms": {"a": {"definition": None, "alloc": {"ip": "203.0.113.5"}},
                        "b": {"definition": None, "alloc": {"ip": "203.0.113.5"}}}}
    message = errors_of(alloc.allocate, SETTINGS, {"c": vm()}, registry)
    assert message == "ip '203.0.113.5' is allocated to more than one VM: 'a', 'b'"


@pytest.mark.parametrize("registry", [{"vms": []}, {"vms": {"a": "x"}}, {"vms": {"a": {"alloc": [1]}}}, [1]])
def test_a_malformed_registry_is_refused(registry):
    assert "registry" in errors_of(alloc.allocate, SETTINGS, {"c": vm()}, registry)


# --- release and collisions ------------------------------------------------------------------


def test_release_frees_exactly_that_vms_values():
    first = alloc.allocate(SETTINGS, {"a": vm(), "b": vm(), "c": vm()}, {})
    before = copy.deepcopy(first)
    released = alloc.release(first, "b")
    assert first == before
    assert released == {"vms": {n: first["vms"][n] for n in ("a", "c")}}
    again = alloc.allocate(SETTINGS, {"a": vm(), "c": vm(), "d": vm()}, released)
    assert allocs(again)["d"] == allocs(first)["b"]


def test_release_of_an_unknown_vm_changes_nothing():
    first = alloc.allocate(SETTINGS, {"a": vm()}, {})
    assert alloc.release(first, "zz") == first
    assert alloc.release({}, "zz") == {"vms": {}}


def test_collisions():
    registry = {"vms": {
        "a": {"alloc": {"ip": "203.0.113.5", "mac": "02:00:00:00:00:AA", "drbd_port": 7800}},
        "b": {"alloc": {"ip": "203.0.113.7", "mac": "02:00:00:00:00:aa", "drbd_port": 7800}},
        "c": {"definition": None, "alloc": {"ip": "203.0.113.7", "vnc_display": 3}},
    }}
    assert alloc.collisions(registry) == [
        "drbd_port 7800 is allocated to more than one VM: 'a', 'b'",
        "ip '203.0.113.7' is allocated to more than one VM: 'b', 'c'",
        "mac '02:00:00:00:00:aa' is allocated to more than one VM: 'a', 'b'",
    ]
    assert alloc.collisions(alloc.allocate(SETTINGS, {"a": vm(), "b": vm()}, {})) == []
    assert alloc.collisions({}) == [] and alloc.collisions(None) == []


# --- properties ------------------------------------------------------------------------------

POOL_OF_NAMES = ["a", "b", "c", "db", "db-2", "mail", "web1", "web2", "web10", "x", "zz"]
NAMES = st.lists(st.sampled_from(POOL_OF_NAMES), unique=True, max_size=8)
QUICK = {"database": None, "deadline": None}  # keep no example database in the work tree
FIXED = st.fixed_dictionaries({}, optional={
    "ip": st.sampled_from(FREE_IPS),
    "mac": st.sampled_from(["52:54:00:00:00:01", "52:54:00:00:00:02", "02:00:00:00:00:01"]),
    "drbd_port": st.integers(7800, 7809),
    "vnc_display": st.integers(1, 10),
})


def unique_values(registry):
    for key in KEYS:
        values = [a[key] for a in allocs(registry).values()]
        assert len(values) == len(set(values)), key


@settings(max_examples=150, **QUICK)
@given(st.lists(st.tuples(st.sampled_from(POOL_OF_NAMES), FIXED), max_size=11))
def test_random_fixed_values_either_raise_or_give_unique_values(vms):
    definitions = {name: vm(**fixed) for name, fixed in vms}
    try:
        result = alloc.allocate({**SETTINGS, "memory_cap": 0}, definitions, {})
    except Invalid as exc:
        assert all(line.startswith(("vm '", "memory_cap")) for line in str(exc).splitlines())
        return
    unique_values(result)
    assert set(result["vms"]) == set(definitions)
    for name, definition in definitions.items():
        for key in ("ip", "mac", "drbd_port", "vnc_display"):
            if definition[key] is not None:
                assert result["vms"][name]["alloc"][key] == definition[key]
    assert alloc.collisions(result) == []


@settings(max_examples=60, **QUICK)
@given(NAMES, st.randoms(use_true_random=False))
def test_allocation_does_not_depend_on_insertion_order(names, random):
    definitions = {name: vm() for name in names}
    shuffled = list(definitions.items())
    random.shuffle(shuffled)
    first = alloc.allocate(SETTINGS, definitions, {})
    assert alloc.allocate(SETTINGS, dict(shuffled), {}) == first
    assert json.dumps(alloc.allocate(SETTINGS, definitions, {})) == json.dumps(first)


@settings(max_examples=60, **QUICK)
@given(NAMES, NAMES)
def test_adding_vms_never_changes_existing_allocations(old, new):
    first = alloc.allocate(SETTINGS, {name: vm() for name in old}, {})
    try:
        second = alloc.allocate(SETTINGS, {name: vm() for name in old + new}, first)
    except Invalid as exc:
        assert "no free" in str(exc)
        return
    for name in old:
        assert second["vms"][name] == first["vms"][name]
    unique_values(second)


@settings(max_examples=60, **QUICK)
@given(NAMES.filter(bool), st.data())
def test_releasing_frees_exactly_the_released_values(names, data):
    first = alloc.allocate(SETTINGS, {name: vm() for name in names}, {})
    gone = data.draw(st.sampled_from(names))
    released = alloc.release(first, gone)
    assert released["vms"] == {n: e for n, e in first["vms"].items() if n != gone}
    again = alloc.allocate(SETTINGS, {n: vm() for n in names if n != gone} | {"newvm1": vm()}, released)
    assert allocs(again)["newvm1"] == allocs(first)[gone]


def test_alloc_is_pure():
    source = Path(alloc.__file__).read_text()
    for word in ("open(", "subprocess", "os.", "socket", "__salt__"):
        assert word not in source


# --- several pairs ---------------------------------------------------------------------------------


def second(network="default", pair_name="two", hosts=("hostC", "hostD"), cidr="203.0.113.0/28",
           gateway="203.0.113.1"):
    return schema.settings({
        "pair_name": pair_name,
        "pair": {hosts[0]: {"admin_ip": "192.0.2.13", "replication_ip": "198.51.100.13"},
                 hosts[1]: {"admin_ip": "192.0.2.14", "replication_ip": "198.51.100.14"}},
        "pool": {"cidr": cidr, "gateway": gateway, "network": network},
    })


@pytest.fixture
def first_pair():
    """Pair "default" (SETTINGS) with vm1 allocated: 203.0.113.5, 52:54:00:00:00:01."""
    return alloc.allocate_pair(SETTINGS, {"vm1": vm()}, {}, {})


def test_allocate_pair_records_the_pair_and_takes_no_mac_another_pair_holds(first_pair):
    assert first_pair["pair"] == {"name": "default", "hosts": PAIR,
                                  "pool": {"cidr": "203.0.113.0/28", "network": "default"}}
    two = alloc.allocate_pair(second(network="dc2"), {"db1": vm()}, {}, {"default": first_pair})
    assert two["vms"]["db1"]["alloc"] == {"ip": "203.0.113.5", "mac": "52:54:00:00:00:02", "drbd_port": 7800,
                                          "drbd_minor": 0, "vnc_display": 1}
    assert alloc.fleet_collisions({"default": first_pair, "two": two}) == []


@pytest.mark.parametrize("settings, names, message", [
    (second(), {"db1"}, "pool: 203.0.113.0/28 overlaps pair 'default''s pool 203.0.113.0/28 on the same "
                        "public network 'default' (pool.network)"),
    (second(cidr="203.0.113.8/29", gateway="203.0.113.9"), {"db1"}, "overlaps pair 'default''s pool"),
    (second(network="dc2"), {"vm1"}, "vm 'vm1': is a VM of pair 'default' already: VM names are unique"),
    (second(network="dc2", hosts=("hostC", "hostB")), {"db1"},
     "pair.hostB: is a host of pair 'default' already"),
])
def test_pair_problems_between_pairs(first_pair, settings, names, message):
    problems = alloc.pair_problems(settings, names, {}, {"default": first_pair})
    assert len(problems) == 1 and message in problems[0], problems


def test_a_pool_beside_on_the_same_network_is_fine(first_pair):
    beside = second(cidr="203.0.113.16/28", gateway="203.0.113.17")
    assert alloc.pair_problems(beside, {"db1"}, {}, {"default": first_pair}) == []


def test_a_registry_recorded_for_other_hosts_keeps_its_pair_name(first_pair):
    other = second(network="dc2", pair_name="default")
    message = "pair 'default' is registered with hosts hostA, hostB, but this pillar gives it hostC, hostD"
    assert message in alloc.pair_problems(other, {"vm1"}, first_pair, {})[0]
    # a pair whose registry holds no VM may get new hosts
    assert alloc.pair_problems(other, set(), dict(first_pair, vms={}), {}) == []


def test_allocate_pair_reports_every_problem_at_once_and_saves_nothing(first_pair):
    text = errors_of(alloc.allocate_pair, second(), {"db1": vm(mac="52:54:00:00:00:01")}, {},
                     {"default": first_pair})
    assert "overlaps pair 'default''s pool" in text
    assert "vm 'db1': mac: '52:54:00:00:00:01' is already allocated in pair 'default' to vm 'vm1'" in text


def test_fleet_collisions_name_what_two_pairs_share(first_pair):
    two = copy.deepcopy(first_pair)
    two["pair"] = dict(two["pair"], name="two")
    assert alloc.fleet_collisions({"default": first_pair, "two": two}) == [
        "vm 'vm1' is in pair 'default' and pair 'two'",
        "mac '52:54:00:00:00:01' is in pair 'default' and pair 'two'",
        "host 'hostA' is in pair 'default' and pair 'two'",
        "host 'hostB' is in pair 'default' and pair 'two'",
        "pair 'default': pool: 203.0.113.0/28 overlaps pair 'two''s pool 203.0.113.0/28 on the same public "
        "network 'default' (pool.network): give the pairs pools that do not overlap, or set pool.network if "
        "they are on separate public networks",
    ]
