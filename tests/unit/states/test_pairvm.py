"""_states/pairvm.py with Salt's loader mocked: each state drives its pairvm execution function."""

from unittest import mock

import pytest

from salt.exceptions import CommandExecutionError
from tests.unit.conftest import load

states = load("_states/pairvm.py", "pairvm_states")

# state, its arguments, the execution function it calls, that function's keyword arguments
CASES = [
    ("vm_present", {}, "pairvm.create", {}),
    ("vm_running", {}, "pairvm.start", {}),
    ("vm_stopped", {}, "pairvm.stop", {"graceful": True, "timeout": 60}),
    ("vm_stopped", {"graceful": False, "timeout": 5}, "pairvm.stop", {"graceful": False, "timeout": 5}),
    ("vm_absent", {}, "pairvm.destroy", {"confirm": True, "force": False}),
    ("vm_absent", {"force": True}, "pairvm.destroy", {"confirm": True, "force": True}),
]
IDS = [f"{state}-{'-'.join(f'{k}={v}' for k, v in args.items()) or 'defaults'}"
       for state, args, _, _ in CASES]


@pytest.fixture
def salt(loader_mock):
    funcs = {
        name: mock.Mock(return_value={"name": "vm1", "changes": [], "comment": f"{name} done"})
        for name in ("pairvm.create", "pairvm.start", "pairvm.stop", "pairvm.destroy")
    }
    funcs["pairvm.pillar_record"] = mock.Mock(return_value={"name": "vm1", "home": "hostA", "peer": "hostB"})

    def install(test=False, minion="hostA"):
        loader_mock(states, salt=funcs, grains={"id": minion}, opts={"test": test})
        return funcs

    return install


def others_not_called(funcs, function):
    return all(not f.called for name, f in funcs.items() if name not in (function, "pairvm.pillar_record"))


@pytest.mark.parametrize("test", [False, True])
@pytest.mark.parametrize("state, args, function, kwargs", CASES, ids=IDS)
def test_state_calls_its_function_with_test_from_opts(salt, state, args, function, kwargs, test):
    funcs = salt(test=test)
    commands = [f"{function} step 1", f"{function} step 2"]
    comment = "would: done" if test else "done"
    funcs[function].return_value = {"name": "vm1", "changes": commands, "comment": comment}
    ret = getattr(states, state)("vm1", **args)
    funcs[function].assert_called_once_with("vm1", test=test, **kwargs)
    assert others_not_called(funcs, function)
    assert ret == {
        "name": "vm1",
        "changes": {"commands": commands},
        "result": None if test else True,
        "comment": comment,
    }


@pytest.mark.parametrize("test", [False, True])
@pytest.mark.parametrize("state, args, function, kwargs", CASES, ids=IDS)
def test_state_without_changes_is_true_with_empty_changes(salt, state, args, function, kwargs, test):
    funcs = salt(test=test)
    ret = getattr(states, state)("vm1", **args)
    funcs[function].assert_called_once_with("vm1", test=test, **kwargs)
    assert ret == {"name": "vm1", "changes": {}, "result": True, "comment": f"{function} done"}


@pytest.mark.parametrize("test", [False, True])
@pytest.mark.parametrize("state, args, function, kwargs", CASES, ids=IDS)
def test_state_fails_with_the_functions_message(salt, state, args, function, kwargs, test):
    funcs = salt(test=test)
    message = "DRBD resource vm1 is Connecting, not Connected: pass disconnected=True"
    funcs[function].side_effect = CommandExecutionError(message)
    ret = getattr(states, state)("vm1", **args)
    assert ret == {"name": "vm1", "changes": {}, "result": False, "comment": message}


def peer_sees(funcs, drbd, running_here=False):
    """hostB's view of vm1: its DRBD resource (``{}``: down) and whether vm1 runs here."""
    funcs["drbd.status"] = mock.Mock(return_value=drbd)
    funcs["pairvm.list"] = mock.Mock(return_value={"vms": [{"name": "vm1", "running": running_here}]})


@pytest.mark.parametrize("test", [False, True])
@pytest.mark.parametrize("peer_role, where", [("Primary", "runs on its home hostA"),
                                              ("Secondary", "is started by its home hostA")])
def test_vm_running_on_the_peer_checks_the_replica_and_changes_nothing(salt, test, peer_role, where):
    funcs = salt(test=test, minion="hostB")
    peer_sees(funcs, {"connection": "Connected", "peer_role": peer_role})
    ret = states.vm_running("vm1")
    funcs["pairvm.start"].assert_not_called()
    funcs["drbd.status"].assert_called_once_with("vm1")
    assert ret == {"name": "vm1", "changes": {}, "result": True,
                   "comment": f"VM vm1 {where}; its replica here is Connected"}


def test_vm_running_on_the_peer_fails_when_its_replica_is_down(salt):
    funcs = salt(minion="hostB")
    peer_sees(funcs, {})
    ret = states.vm_running("vm1")
    assert ret["result"] is False and ret["changes"] == {}
    assert "DRBD resource is not up on hostB" in ret["comment"]
    funcs["pairvm.start"].assert_not_called()


def test_vm_running_on_the_peer_says_when_it_runs_there_away_from_home(salt):
    funcs = salt(minion="hostB")
    peer_sees(funcs, {"connection": "Connected", "peer_role": "Secondary", "role": "Primary"},
              running_here=True)
    ret = states.vm_running("vm1")
    assert ret["result"] is True and ret["comment"] == "VM vm1 runs here on hostB, away from its home hostA"


def test_vm_running_fails_when_pillar_does_not_define_the_vm(salt):
    funcs = salt()
    message = "VM vm1 is not defined in pillar pairvm:vms"
    funcs["pairvm.pillar_record"].side_effect = CommandExecutionError(message)
    ret = states.vm_running("vm1")
    assert ret == {"name": "vm1", "changes": {}, "result": False, "comment": message}
    funcs["pairvm.start"].assert_not_called()


def test_virtual_needs_the_execution_module(loader_mock):
    loader_mock(states, salt={})
    ok, why = states.__virtual__()
    assert ok is False and "pairvm execution module" in why
    loader_mock(states, salt={"pairvm.create": mock.Mock()})
    assert states.__virtual__() == "pairvm"
