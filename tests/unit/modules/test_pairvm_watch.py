"""_modules/pairvm_watch.py: reconnect a plain disconnect with backoff and a limit; never a split brain."""

import copy
from unittest import mock

import pytest

from salt.exceptions import CommandExecutionError
from tests.unit.fakehost import MODULES, drbd_state

pairvm = MODULES["pairvm_watch"]


@pytest.fixture
def vm1(host, monkeypatch):
    host.install("vm1", drbd=drbd_state(connection="StandAlone"))
    host.drbd["vm1"]["split_brain"] = False
    sleeps = []
    monkeypatch.setattr(pairvm.time, "sleep", sleeps.append)
    sent = mock.Mock()
    host.salt["event.send"] = sent
    host.sleeps, host.sent = sleeps, sent
    return host


def answers(host, *states):
    """drbd.status answers these states in turn (the last one for ever)."""
    seq = [dict(drbd_state(connection=c), split_brain=False) for c in states]

    def status(name=None):
        return {"vm1": copy.deepcopy(seq.pop(0) if len(seq) > 1 else seq[0])}

    host.salt["drbd.status"] = mock.Mock(side_effect=status)


def test_standalone_is_connected(vm1):
    answers(vm1, "StandAlone", "Connected")
    res = pairvm.reconnect("vm1")
    assert res["changes"] == ["drbdadm connect vm1"] and res["attempts"] == 1
    assert vm1.actions() == ["drbd.connect"] and vm1.sleeps == [2]


def test_backoff_doubles_and_gives_up_after_the_limit(vm1):
    answers(vm1, "StandAlone")
    vm1.fail("drbd.connect", CommandExecutionError("(102) Local address(port) already in use."))
    with pytest.raises(CommandExecutionError, match="still StandAlone on hostA after 3 connect attempts; "
                                                    "last error: .*already in use"):
        pairvm.reconnect("vm1", attempts=3, backoff=1)
    assert vm1.sleeps == [1, 2, 4] and len(vm1.calls("drbd.connect")) == 3
    tag, data = vm1.sent.call_args.args
    assert tag == "pairvm/drbd/vm1/reconnect_failed" and data["attempts"] == 3


def test_connecting_is_left_to_drbd(vm1):
    answers(vm1, "Connecting")
    res = pairvm.reconnect("vm1")
    assert res["changes"] == [] and "Connecting" in res["comment"] and vm1.actions() == []


def test_a_split_brain_is_never_touched(vm1):
    split = dict(drbd_state(connection="StandAlone"), split_brain=True)
    vm1.salt["drbd.status"] = mock.Mock(return_value={"vm1": split})
    with pytest.raises(CommandExecutionError, match="split brain on hostA: not reconnected"):
        pairvm.reconnect("vm1")
    assert vm1.actions() == []
    assert vm1.sent.call_args.args[0] == "pairvm/drbd/vm1/split_brain"


def test_test_mode_lists_the_command(vm1):
    answers(vm1, "StandAlone")
    res = pairvm.reconnect("vm1", test=True)
    assert res["changes"] == ["drbdadm connect vm1"] and vm1.actions() == [] and vm1.sleeps == []


@pytest.mark.parametrize(("kwargs", "why"), [({"name": "bad;name"}, "it contains ';'"),
                                              ({"name": "vm9"}, "no VM vm9 on this host"),
                                              ({"name": "vm1", "attempts": 0}, "attempts"),
                                              ({"name": "vm1", "backoff": "2"}, "backoff")])
def test_bad_input_changes_nothing(vm1, kwargs, why):
    before = vm1.snapshot()
    with pytest.raises(CommandExecutionError, match=why):
        pairvm.reconnect(**kwargs)
    assert vm1.actions() == [] and vm1.snapshot() == before
