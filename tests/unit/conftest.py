"""Unit tier: the formula's modules with Salt's dunders mocked; no daemons."""

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def load(path, name):
    """Import a formula file (module, state, runner or the host command) by path."""
    spec = importlib.util.spec_from_loader(
        name, importlib.machinery.SourceFileLoader(name, str(REPO / path))
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
    return module


def pair_pillar():
    """A fresh pillar ``pairvm:`` of the lab pair with two VMs (runner and verify tests)."""
    return {
        "pair": {
            "hostA": {"admin_ip": "10.77.0.11", "replication_ip": "10.78.0.11"},
            "hostB": {"admin_ip": "10.77.0.12", "replication_ip": "10.78.0.12"},
        },
        "pool": {"cidr": "10.79.0.0/24", "gateway": "10.79.0.1"},
        "bridge": "br0",
        "memory_cap": 2048,
        "domain_type": "qemu",
        "vms": {
            "vm1": {"home": "hostA", "memory": 256, "disc": "1G"},
            "vm2": {"home": "hostB", "memory": 512, "disc": "2G"},
        },
    }


def done(stdout="", retcode=0, stderr=""):
    return {"retcode": retcode, "stdout": stdout, "stderr": stderr, "pid": 1}


class Commands:
    """A cmd.run_all double: answers by argv prefix, records every argv."""

    def __init__(self, answers):
        self.answers = answers
        self.calls = []

    def __call__(self, argv, python_shell=None, **_kwargs):
        assert python_shell is False and isinstance(argv, list)
        self.calls.append(argv)
        for prefix, answer in self.answers.items():
            if tuple(argv[:len(prefix)]) == prefix:
                return answer(argv) if callable(answer) else answer
        raise AssertionError(f"unexpected command {argv}")


class FakeClock:
    """Stands for the ``time`` module: sleeping advances a virtual clock at once."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now

    def time(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


@pytest.fixture
def loader_mock():
    """Install Salt's dunders on a loaded module: ``loader_mock(module, salt=..)``."""

    def install(module, salt=None, grains=None, opts=None):
        module.__salt__ = salt or {}
        module.__grains__ = grains or {"id": "hostA"}
        module.__opts__ = opts or {}
        module.__context__ = {}
        return module

    return install
