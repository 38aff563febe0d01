"""The integration tier: the lab pair with a real salt-master and two minions.

The test process runs in the lab's control namespace (see tests/conftest.py);
the master binds the control bridge's address, each minion runs inside its
host's namespaces with the lab shims first on PATH, and gets the formula's
modules through ``saltutil.sync_all`` from the master's file server.
"""

import pytest

import salt.utils.yaml
from tests.lab import lab as labmod
from tests.lab import saltlab


@pytest.hookimpl(tryfirst=True)  # before pytest-random-order reads the marker
def pytest_collection_modifyitems(config, items):
    """Without --lab, skip. With ``--random-order-bucket=module`` (scripts/test), the modules
    run in a random order, so each must set up what it needs in its own fixtures; the tests
    of one module keep their file order: each module is one scenario over its fixtures."""
    for item in items:
        if not config.getoption("--lab"):
            item.add_marker(pytest.mark.skip(reason="integration tests need --lab (make test)"))
        item.add_marker(pytest.mark.random_order(disabled=True))


@pytest.fixture(scope="session")
def lab():
    pair = labmod.Lab()
    try:
        yield pair.up(clean_first=False)
    finally:
        pair.down()


@pytest.fixture(scope="session")
def salt_master(salt_factories, lab):
    master = saltlab.master_factory(salt_factories)
    with master.started():
        yield master


@pytest.fixture(scope="session")
def minions(salt_factories, salt_master, lab):
    started = [saltlab.minion_factory(salt_master, host) for host in lab.hosts.values()]
    for minion in started:
        minion.start()
    try:
        saltlab.sync(salt_master)
        yield {m.id: m for m in started}
    finally:
        for minion in started:
            minion.terminate()


@pytest.fixture(scope="session")
def salt_cli(salt_master, minions):
    return salt_master.salt_cli(timeout=120)


@pytest.fixture(scope="session")
def salt_run_cli(salt_master, minions):
    return salt_master.salt_run_cli(timeout=120)


@pytest.fixture(scope="module")
def pillar_vms(salt_master):
    """Write test_vms.sls (VMs defined in pillar) for the module; empty again at its end.
    The next ``state.orchestrate`` or ``saltutil.refresh_pillar`` gives the minions it."""
    path = salt_master.config["pillar_roots"]["base"][0] + "/test_vms.sls"

    def write(vms):
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(salt.utils.yaml.safe_dump({"pairvm": {"vms": vms}} if vms else {}))

    yield write
    write({})
