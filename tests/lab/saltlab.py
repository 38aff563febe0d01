"""Salt in the lab: the master in the control namespace, a minion in each host.

The same configuration serves the test tiers (through pytest-salt-factories)
and the demo (plain daemons, ``scripts/lab-salt`` to talk to them).
"""

import json
import sys
from pathlib import Path

from saltfactories.daemons.minion import SaltMinion

from tests.lab import namespaces
from tests.lab.hosts import REPO, lab_environ
from tests.lab.lab import CONTROL_IP

if str(REPO / "_utils") not in sys.path:  # the formula's library: the peer runner ACL
    sys.path.insert(0, str(REPO / "_utils"))
from pairvmlib import peer  # noqa: E402

LAB_PAIR = ("hostA", "hostB")
# The tests' second pair: only its pillar and its place in the peer_run ACL exist (an extra
# minion id calls publish.runner as its host; tests/integration/test_session.py).
OTHER_PAIR = ("hostC", "hostD")

# What the master's file server serves: the formula and the custom modules,
# never pillar/ (served as a tree of symlinks, see README "Install").
SERVED = {
    "pairvm": REPO / "salt" / "pairvm",
    "top.sls": REPO / "salt" / "top.sls",
    "_modules": REPO / "_modules",
    "_states": REPO / "_states",
    "_runners": REPO / "_runners",
    "_pillar": REPO / "_pillar",
    "_utils": REPO / "_utils",
    "_beacons": REPO / "_beacons",
}
# The reactor of the formula (README "Monitoring"), as an operator sets it up.
REACTOR = [
    {"salt/beacon/*/pairvm_drbd/*": ["salt://pairvm/reactor/drbd.sls"]},
    {"salt/minion/*/start": ["salt://pairvm/reactor/autostart.sls"]},
]


def file_tree(dest):
    """Build the master's file root at dest: symlinks to the served parts only."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name, target in SERVED.items():
        link = dest / name
        if target.exists() and not link.is_symlink():
            link.symlink_to(target)
    return dest


# Grains are computed again by every salt-run process, master worker request and module
# refresh; Salt's lvm grain runs lvm once per VG each time, which cost about a quarter of
# the integration tier's CPU. Nothing in the formula reads grains other than ``id``.
GRAINS = {"disable_grains": ["lvm"], "grains_cache": True}


def master_config(root, pillar_root=REPO / "pillar", pair_hosts=LAB_PAIR, reactor=True):
    """Master settings for the lab (root: a directory of the master's own). ``peer_run`` is
    what ``salt-run pairvm.peer_acl write=True`` writes for the pairs of ``pair_hosts``;
    ``reactor``: the formula's reactor (README "Monitoring")."""
    return {
        "interface": CONTROL_IP,
        "file_roots": {"base": [str(file_tree(Path(root) / "srv"))]},
        "pillar_roots": {"base": [str(pillar_root)]},
        "auto_accept": True,
        "ext_pillar": [{"pairvm_registry": {}}],
        "fileserver_followsymlinks": True,
        "timeout": 30,
        "peer_run": peer.acl(pair_hosts),
        **({"reactor": REACTOR} if reactor else {}),
        **GRAINS,
    }


def minion_config():
    return {"master": CONTROL_IP, "log_level_logfile": "info", **GRAINS}


class LabSaltMinion(SaltMinion):
    """A salt-minion started inside the lab host named like its id."""

    def cmdline(self, *args):
        return namespaces.nsenter_argv(self.id) + super().cmdline(*args)


# Pillar by minion id: the demo pair, and the second pair of the fleet tests.
TEST_PILLAR_TOP = """base:
  'hostA,hostB':
    - match: list
    - pairvm
    - test_vms
    - test_watch
  'hostC,hostD':
    - match: list
    - second_pair
    - test_watch
"""
# A second pair's pillar (pair "two": hostC and hostD, its own pool), for tests that put it
# into ``second_pair.sls`` while they need it.
OTHER_PAIR_PILLAR = """pairvm:
  pair_name: two
  pair:
    hostC: {admin_ip: 10.77.0.13, replication_ip: 10.78.0.13}
    hostD: {admin_ip: 10.77.0.14, replication_ip: 10.78.0.14}
  pool: {cidr: 10.80.0.0/24, gateway: 10.80.0.1}
  vms: {}
"""
# The tests run without the DRBD beacon (its reactor would reconnect what a
# test disconnects); tests/integration/test_watch.py turns it on for itself.
TEST_WATCH = "pairvm:\n  watch:\n    beacon: false\n"


def make_test_pillar_root(root):
    """A pillar root for the tests: the example pillar plus ``test_vms.sls``,
    which tests rewrite to define VMs (merged into ``pairvm:vms``), ``second_pair.sls``,
    the fleet tests' pair of hostC and hostD, and ``test_watch.sls`` (the beacon off)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "top.sls").write_text(TEST_PILLAR_TOP)
    if not (root / "pairvm.sls").exists():
        (root / "pairvm.sls").symlink_to(REPO / "pillar" / "pairvm.sls")
    for name in ("test_vms.sls", "second_pair.sls"):
        (root / name).write_text("{}\n")
    (root / "test_watch.sls").write_text(TEST_WATCH)
    return root


def master_factory(salt_factories):
    root = salt_factories.root_dir / "master-srv"
    # The formula's reactor, as in production: its DRBD part acts on the beacon's events only,
    # and the beacon is off in the tests' pillar except while test_watch.py runs.
    config = master_config(root, pillar_root=make_test_pillar_root(root / "pillar"),
                           pair_hosts=LAB_PAIR + OTHER_PAIR)
    return salt_factories.salt_master_daemon("master", overrides=config, start_timeout=120)


def minion_factory(master, host):
    minion = master.salt_minion_daemon(
        host.name, overrides=minion_config(), factory_class=LabSaltMinion, start_timeout=120
    )
    minion.environ = dict(lab_environ(host.name))
    return minion


def sync(master):
    """Sync the formula's modules to the master (runners) and the minions."""
    master.salt_run_cli(timeout=120).run("fileserver.update")
    run = master.salt_run_cli(timeout=120).run("saltutil.sync_all")
    assert run.returncode == 0, run
    res = master.salt_cli(timeout=120).run("saltutil.sync_all", minion_tgt="*")
    assert res.returncode == 0, res


class SaltCall:
    """``salt-call --local`` inside a lab host (namespace or kernel lab), returning parsed JSON:
    ``call(function, *args)`` -> data, or with ``check=False`` -> (rc, data)."""

    def __init__(self, host, timeout=120):
        self.host, self.timeout = host, timeout

    def __call__(self, function, *args, check=True, timeout=None):
        argv = ["salt-call", "--local", "--out=json", "--retcode-passthrough",
                "--log-level=quiet", function, *args]
        proc = self.host.run(argv, check=False, timeout=timeout or self.timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"[{self.host.name}] salt-call {function} {args}: rc {proc.returncode}\n"
                                 f"{proc.stdout}{proc.stderr}")
        # A function that raised prints its error on stderr only.
        data = json.loads(proc.stdout)["local"] if proc.stdout.strip() else proc.stderr
        return (proc.returncode, data) if not check else data
