"""pairvmlib.rehome: the plan of each host's part of a swap, from what the host finds."""

import pytest

from pairvmlib import rehome, schema
from pairvmlib.errors import Failed, Invalid
from tests.unit.conftest import pair_pillar

BEFORE = {"running": False, "old_lv": True, "new_lv": False, "moved": False, "drbd_up": True,
          "res_current": False, "resume": False}
COPY = ["copy", "write_record", "write_res", "up"]


def record(home="hostA"):
    pillar = pair_pillar()
    settings = schema.settings(pillar)
    definition = schema.vm_definition("vm1", {"home": home, "memory": 128, "disc": "64M"}, settings)
    alloc = {"ip": "10.79.0.5", "mac": "52:54:00:00:00:05", "drbd_port": 7800, "drbd_minor": 0,
             "vnc_display": 1}
    return schema.record("vm1", definition, alloc, settings)


def test_moved_record_swaps_home_peer_and_the_volume_groups():
    moved = rehome.moved_record(record("hostA"), "hostB")
    assert moved == record("hostB")
    assert moved["hosts"]["hostB"]["vg"] == "here" and moved["hosts"]["hostA"]["vg"] == "there"
    assert rehome.moved_record(moved, "hostB") == moved


def test_moved_record_refuses_a_host_of_no_pair():
    with pytest.raises(Invalid, match="'hostC' is not a host of VM vm1's pair"):
        rehome.moved_record(record(), "hostC")


@pytest.mark.parametrize(("me", "rec_home", "vgs"), [
    ("hostA", "hostA", ("here", "there")),  # the old home, before
    ("hostB", "hostA", ("there", "here")),  # the new home, before
    ("hostA", "hostB", ("here", "there")),  # the old home, its record moved
    ("hostB", "hostB", ("there", "here")),  # the new home, its record moved
])
def test_vgs_are_the_same_before_and_after_the_record_moved(me, rec_home, vgs):
    assert rehome.vgs(record(rec_home), me, "hostB") == vgs


@pytest.mark.parametrize(("state", "steps"), [
    ({}, ["down", "create_new", *COPY]),  # connected, as a swap finds it
    ({"drbd_up": False}, ["create_new", *COPY]),
    # interrupted during or after the copy, before the record moved: copied again (the old LV is the disc)
    ({"new_lv": True, "resume": True}, ["down", *COPY]),
    ({"new_lv": True, "resume": True, "drbd_up": False, "res_current": True}, COPY),
    # after the commit point: the new LV is the disc, never copied over again
    ({"new_lv": True, "moved": True, "drbd_up": False, "res_current": False}, ["write_res", "up"]),
    ({"new_lv": True, "moved": True, "drbd_up": True, "res_current": False}, ["down", "write_res", "up"]),
    ({"new_lv": True, "moved": True, "drbd_up": False, "res_current": True}, ["up"]),
    ({"new_lv": True, "moved": True, "res_current": True}, []),
    ({"new_lv": True, "moved": True, "res_current": True, "old_lv": False}, []),  # finished
])
def test_copy_steps(state, steps):
    assert rehome.copy_steps({**BEFORE, **state}) == steps


@pytest.mark.parametrize(("state", "why"), [
    ({"running": True}, "it is running on this host: stop it"),
    ({"running": True, "moved": True, "new_lv": True}, "it is running on this host"),
    ({"new_lv": True}, "the LV it would move to exists already"),
    ({"old_lv": False}, "its old LV is missing"),
    ({"moved": True}, "the new LV is missing"),
])
def test_copy_steps_refuse(state, why):
    with pytest.raises(Failed, match=why):
        rehome.copy_steps({**BEFORE, **state})


@pytest.mark.parametrize(("state", "steps"), [
    ({"moved": True, "in_sync": True, "old_lv": True}, ["remove_old"]),
    ({"moved": True, "in_sync": True, "old_lv": False}, []),
])
def test_finish_steps(state, steps):
    assert rehome.finish_steps(state) == steps


@pytest.mark.parametrize(("state", "why"), [
    ({"moved": False, "in_sync": True, "old_lv": True}, "copy phase has not finished"),
    ({"moved": True, "in_sync": False, "old_lv": True}, "the old LV is kept until it is"),
])
def test_the_old_lv_stays_until_the_new_resource_is_in_sync(state, why):
    with pytest.raises(Failed, match=why):
        rehome.finish_steps(state)


def test_sizes_must_be_equal_to_the_mib():
    rehome.check_sizes("here/vm1", 64, "there/vm1", 64)
    with pytest.raises(Failed, match="LV there/vm1 is 68 MiB and LV here/vm1 64 MiB"):
        rehome.check_sizes("here/vm1", 64, "there/vm1", 68)


def test_target_is_the_peer_or_the_swap_begun():
    assert rehome.target(["hostA", "hostB"], "hostA") == "hostB"
    assert rehome.target(["hostA", "hostB"], "hostB") == "hostA"
    assert rehome.target(["hostA", "hostB"], "hostB", {"to": "hostB"}) == "hostB"
    with pytest.raises(Failed, match="'hostC' is not a host of its pair"):
        rehome.target(["hostA", "hostB"], "hostC")
