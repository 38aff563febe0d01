"""The execution modules' unit tests share the fake host of tests/unit/fakehost.py."""

import pytest

from tests.unit.fakehost import Host


@pytest.fixture
def host(tmp_path, monkeypatch, loader_mock):
    """hostA, the home of vm1 and the peer of vm2."""
    return Host("hostA", tmp_path, monkeypatch, loader_mock)


@pytest.fixture
def peer(tmp_path, monkeypatch, loader_mock):
    """hostB, the peer of vm1."""
    return Host("hostB", tmp_path, monkeypatch, loader_mock)
