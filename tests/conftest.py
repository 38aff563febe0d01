"""Shared pytest wiring for every tier.

The saltfactories plugin binds its log server and event listener to 0.0.0.0
by default. Here they bind to loopback, or, when the lab tier runs, to the
control namespace's admin address, the only place the lab minions can reach.
"""

import logging
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
# The formula's library, importable as Salt's loader makes it for the formula's modules.
if str(REPO / "_utils") not in sys.path:
    sys.path.insert(0, str(REPO / "_utils"))

from saltfactories.plugins.event_listener import EventListener  # noqa: E402

from tests.lab import lab as labmod  # noqa: E402
from tests.lab import namespaces  # noqa: E402


def pytest_addoption(parser):
    parser.addoption(
        "--lab", action="store_true",
        help="run inside the lab's control namespace (needed by tests/integration)",
    )
    parser.addoption(
        "--shard", default="1/1", metavar="K/N",
        help="tests/integration: run the K-th of N shards of about equal length (whole modules)",
    )


def lab_wanted(config):
    return config.getoption("--lab")


def listen_host(config):
    return labmod.CONTROL_IP if lab_wanted(config) else "127.0.0.1"


@pytest.hookimpl(hookwrapper=True)
def pytest_sessionstart(session):
    """Before the log server starts: pick its address, enter the lab if asked."""
    if lab_wanted(session.config):
        labmod.clean()
        labmod.create_control_namespace()
        namespaces.enter_netns(namespaces.CONTROL)
    log_server = session.config.pluginmanager.get_plugin("saltfactories-log-server")
    if log_server is not None:
        log_server.log_host = listen_host(session.config)
    yield


def pytest_unconfigure(config):
    # Salt logs from atexit handlers after pytest closed its streams.
    logging.raiseExceptions = False


@pytest.fixture(scope="session")
def event_listener(request):
    """The factories' event listener, bound to loopback or the lab's address."""
    listener = EventListener()
    listener.host = listen_host(request.config)
    listener.address = f"tcp://{listener.host}:{listener.port}"
    with listener:
        yield listener


@pytest.fixture(scope="session")
def salt_factories_config():
    """Short root dir: salt's unix sockets have a path length limit."""
    return {"root_dir": labmod.SALT_TEST_ROOT, "slow_stop": False}
