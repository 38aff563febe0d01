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

# Seconds each module takes (measured alone on the 2-CPU machine, rounded): --shard K/N splits
# the tier into parts of about equal length, to run each on a lab of its own (PVLAB_INSTANCE) by
# hand; a module missing here counts 60 s.
MODULE_SECONDS = {
    "test_session.py": 250, "test_vm_lifecycle.py": 210, "test_migrate.py": 200,
    "test_fleet.py": 180, "test_backup.py": 150, "test_image.py": 120, "test_watch.py": 110,
    "test_swap.py": 100, "test_lab.py": 55, "test_verify.py": 50, "test_metrics.py": 40,
}


def shard_of(modules, count):
    """Which shard (0-based) runs each module: longest first, to the shortest shard so far."""
    load, where = [0] * count, {}
    for module in sorted(modules, key=lambda m: (-MODULE_SECONDS.get(m, 60), m)):
        where[module] = load.index(min(load))
        load[where[module]] += MODULE_SECONDS.get(module, 60)
    return where


def _deselect_other_shards(config, items):
    index, count = (int(n) for n in config.getoption("--shard").split("/"))
    if not 1 <= index <= count:
        raise pytest.UsageError(f"--shard {index}/{count}: K must be between 1 and N")
    where = shard_of({item.path.name for item in items}, count)
    keep = [item for item in items if where[item.path.name] == index - 1]
    config.hook.pytest_deselected(items=[item for item in items if item not in keep])
    items[:] = keep


@pytest.hookimpl(tryfirst=True)  # before pytest-random-order reads the marker
def pytest_collection_modifyitems(config, items):
    """Without --lab, skip. With ``--random-order-bucket=module`` (scripts/test), the modules
    run in a random order, so each must set up what it needs in its own fixtures; the tests
    of one module keep their file order: each module is one scenario over its fixtures."""
    _deselect_other_shards(config, items)
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
