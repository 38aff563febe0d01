"""Two pairs from one master, through the real master and four real minions.

Pair ``default`` is the lab's pair (hostA, hostB: pillar/pairvm.sls); pair
``two`` is hostC and hostD, which join the lab for this module only
(``Lab.extend``; ``second_pair.sls``, by minion id), on a public network of
their own with the same pool. No VM is started: allocations, pillar, DRBD
configuration and the runner's refusals are the point.
"""

import json
import os
import re
import shutil
import stat
import time
from pathlib import Path

import pytest

import salt.utils.yaml
from tests.integration.test_vm_lifecycle import footprint, wait_for
from tests.lab import lab as labmod
from tests.lab import saltlab
from tests.lab.hosts import DATA, REPO

PAIRS = {"default": ("hostA", "hostB"), "two": ("hostC", "hostD")}
SECRET_LEAK_ROOTS = (str(DATA), str(labmod.SALT_TEST_ROOT))


def second_pillar(network="second"):
    """Pair two: the lab pillar's settings, its own hosts, the same pool on another network."""
    data = salt.utils.yaml.safe_load((REPO / "pillar" / "pairvm.sls").read_text())
    pairvm = data["pairvm"]
    pairvm.update(pair_name="two", vms={}, pair={
        "hostC": {"admin_ip": "10.77.0.13", "replication_ip": "10.78.0.13"},
        "hostD": {"admin_ip": "10.77.0.14", "replication_ip": "10.78.0.14"}})
    pairvm["pool"] = dict(pairvm["pool"], network=network)
    return data


class Fleet:
    def __init__(self, lab, salt_master, salt_cli, salt_run_cli):
        self.lab, self.master, self.cli, self.run = lab, salt_master, salt_cli, salt_run_cli
        self.pillar_file = Path(salt_master.config["pillar_roots"]["base"][0]) / "second_pair.sls"
        self.cache = Path(salt_master.config["cachedir"]) / "pairvm" / "pairs"
        self.minions = {}

    def write(self, data):
        self.pillar_file.write_text(salt.utils.yaml.safe_dump(data))

    def registry(self, pair):
        path = self.cache / pair / "registry.json"
        return json.loads(path.read_text()) if path.exists() else {"vms": {}}

    def secret(self, pair):
        return (self.cache / pair / "drbd-secret").read_text().strip()

    def alloc(self, pair, name):
        return self.registry(pair)["vms"][name]["alloc"]

    def create(self, name, home):
        ret = self.run.run("pairvm.create", name, home, "64", "16M", "state=stopped")
        assert ret.returncode == 0, ret
        wait_for(lambda: self.in_sync(name, next(p for p, h in PAIRS.items() if home in h)),
                 f"{name} in sync")
        return ret

    def in_sync(self, name, pair):
        for host in PAIRS[pair]:
            state = self.cli.run("drbd.status", name, minion_tgt=host).data
            if not (state.get("connection") == "Connected" and state.get("disk") == "UpToDate"
                    and state.get("peer_disk") == "UpToDate"):
                return False
        return True

    def footprint(self, name, pair):
        return footprint(self.lab, name, PAIRS[pair])


@pytest.fixture(scope="module")
def fleet(lab, salt_master, salt_cli, salt_run_cli):
    fleet = Fleet(lab, salt_master, salt_cli, salt_run_cli)
    fleet.write(second_pillar())
    try:
        for host in lab.extend(PAIRS["two"]):
            fleet.minions[host.name] = saltlab.minion_factory(salt_master, host)
            fleet.minions[host.name].start()
        for name in PAIRS["two"]:
            assert salt_cli.run("saltutil.sync_all", minion_tgt=name).returncode == 0
            assert salt_cli.run("state.apply", "pairvm.config", minion_tgt=name).returncode == 0
        yield fleet
    finally:
        for name in ("fa1", "fc1", "fc3"):
            salt_run_cli.run("pairvm.destroy", name, "confirm=True", "force=True")
        for minion in fleet.minions.values():
            minion.terminate()
        for name in fleet.minions:
            salt_master.salt_key_cli().run("-d", name, "-y")
        lab.retire(PAIRS["two"])
        fleet.write({})
        shutil.rmtree(fleet.cache / "two", ignore_errors=True)


def test_vms_of_both_pairs_get_independent_allocations(fleet):
    assert not fleet.registry("default")["vms"], "pair default must start without VMs"
    fleet.create("fa1", "hostA")
    fleet.create("fc1", "hostC")
    one, two = fleet.alloc("default", "fa1"), fleet.alloc("two", "fc1")
    # the same pool on two separate networks: the same first address; ports and minors per pair
    assert one["ip"] == two["ip"] == "10.79.0.5"
    assert one["drbd_port"] == two["drbd_port"] and one["drbd_minor"] == two["drbd_minor"]
    assert one["mac"] != two["mac"]  # MACs are unique across the master
    assert fleet.registry("two")["pair"]["hosts"].keys() == {"hostC", "hostD"}


def test_overlapping_pools_on_one_network_are_refused(fleet):
    before = (fleet.cache / "two" / "registry.json").read_bytes()
    fleet.write(second_pillar(network="default"))
    try:
        ret = fleet.run.run("pairvm.create", "fc2", "hostC", "64", "16M", "state=stopped")
    finally:
        fleet.write(second_pillar())
    assert ret.returncode != 0
    assert "overlaps pair 'default''s pool 10.79.0.0/24 on the same public network 'default'" in ret.stdout
    assert (fleet.cache / "two" / "registry.json").read_bytes() == before
    empty = {"lvs": [], "res": False, "machine": False, "domain": False}
    assert fleet.footprint("fc2", "two") == {"hostC": empty, "hostD": empty}


def test_list_and_verify_show_both_pairs(fleet):
    rows = fleet.run.run("pairvm.list").data
    assert rows["unreachable"] == {}
    assert {(r["pair"], r["name"]) for r in rows["vms"]} >= {("default", "fa1"), ("two", "fc1")}
    assert all(r["disagreements"] == [] for r in rows["vms"]), rows
    ret = fleet.run.run("pairvm.verify")
    assert ret.data["pairs"] == ["default", "two"]
    assert (ret.returncode, ret.data["lines"]) == (0, [])
    assert [(r["pair"], r["name"]) for r in fleet.run.run("pairvm.list", "pair=two").data["vms"]] == \
        [("two", "fc1")]


def _world_readable(path):
    """Whether a user who is not root (nor in root's group) can read ``path``."""
    if not os.stat(path).st_mode & stat.S_IROTH:
        return False
    parent = Path(path).parent
    while parent != parent.parent:
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            return False
        parent = parent.parent
    return True


def test_drbd_peers_authenticate_with_a_secret_per_pair_that_only_root_reads(fleet):
    secrets = {pair: fleet.secret(pair) for pair in PAIRS}
    assert secrets["default"] != secrets["two"]
    for pair, hosts in PAIRS.items():
        for name in hosts:
            host = fleet.lab.hosts[name]
            dump = host.run(["drbdadm", "dump", "all"]).stdout
            assert re.search(r"cram-hmac-alg\s+sha1;", dump)
            # drbdadm dump quotes a value only when it must
            assert set(re.findall(r'shared-secret\s+"?([^";\s]+)"?;', dump)) == {secrets[pair]}, name
            running = fleet.cli.run("drbd.peer_auth", minion_tgt=name).data
            assert running and all(running.values()), (name, running)
    for pair in PAIRS:
        assert stat.S_IMODE(os.stat(fleet.cache / pair / "drbd-secret").st_mode) == 0o600
        assert stat.S_IMODE(os.stat(fleet.cache / pair).st_mode) == 0o700
    # every file that holds a secret, on the hosts, the master and the minions: root only
    holders = []
    for root, dirs, files in os.walk(SECRET_LEAK_ROOTS[0]):
        dirs[:] = [d for d in dirs if d not in ("lv", "nodes")]
        holders += [os.path.join(root, f) for f in files if not f.endswith(".img")]
    for root, _, files in os.walk(SECRET_LEAK_ROOTS[1]):
        holders += [os.path.join(root, f) for f in files]
    found = []
    for path in holders:
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):  # sockets, FIFOs, links
                continue
            with open(path, "rb") as fh:
                data = fh.read(8 << 20)
        except OSError:
            continue
        if any(s.encode() in data for s in secrets.values()):
            found.append(path)
    assert any(p.endswith(".res") for p in found) and any(p.endswith("drbd-secret") for p in found)
    assert [p for p in found if _world_readable(p)] == []


def test_a_host_of_one_pair_gets_nothing_of_the_other_pair(fleet):
    secrets = {pair: fleet.secret(pair) for pair in PAIRS}
    macs = {"default": fleet.alloc("default", "fa1")["mac"], "two": fleet.alloc("two", "fc1")["mac"]}
    for pair, other, host, foreign in (("two", "default", "hostC", ("fa1", "hostA", "10.77.0.11")),
                                       ("default", "two", "hostA", ("fc1", "hostC", "10.77.0.13"))):
        ret = fleet.cli.run("pillar.items", "unmask=True", minion_tgt=host)
        assert ret.returncode == 0, ret
        text = json.dumps(ret.data)
        assert ret.data["pairvm"]["drbd_options"]["shared_secret"] == secrets[pair]
        assert secrets[other] not in text and macs[other] not in text and macs[pair] in text
        for word in foreign:
            assert word not in text, (host, word)


def test_destroying_a_vm_of_one_pair_leaves_the_other_untouched(fleet):
    kept = fleet.footprint("fa1", "default")
    registry = (fleet.cache / "default" / "registry.json").read_bytes()
    ret = fleet.run.run("pairvm.destroy", "fc1", "confirm=True")
    assert ret.returncode == 0 and ret.data["pair"] == "two", ret
    empty = {"lvs": [], "res": False, "machine": False, "domain": False}
    assert fleet.footprint("fc1", "two") == {"hostC": empty, "hostD": empty}
    assert "fc1" not in fleet.registry("two")["vms"]
    assert fleet.footprint("fa1", "default") == kept and kept["hostA"]["lvs"] == ["here/fa1"]
    assert (fleet.cache / "default" / "registry.json").read_bytes() == registry


def test_with_a_minion_stopped_create_and_destroy_refuse_without_waiting_for_the_call(fleet):
    """The ping budget is 8 s, a call's timeout 300 s: a bound of 60 s tells them apart even on
    a busy machine (the lab lanes of scripts/test share 2 CPUs); the figure is printed."""
    fleet.create("fc3", "hostC")
    before = (fleet.footprint("fc3", "two")["hostC"], (fleet.cache / "two" / "registry.json").read_bytes())
    fleet.minions["hostD"].terminate()
    try:
        for args in (("pairvm.create", "fc4", "hostC", "64", "16M", "state=stopped"),
                     ("pairvm.destroy", "fc3", "confirm=True", "force=True")):
            start = time.monotonic()
            ret = fleet.run.run(*args)
            took = time.monotonic() - start
            assert ret.returncode != 0 and "hostD did not answer a ping" in ret.stdout, ret
            assert took < 60, f"{args[0]} took {took:.1f} s to refuse"
            print(f"\n{args[0]} refused in {took:.1f} s")
        after = (fleet.footprint("fc3", "two")["hostC"], (fleet.cache / "two" / "registry.json").read_bytes())
        assert after == before and after[0]["lvs"] == ["here/fc3"]
        assert fleet.footprint("fc4", "two")["hostC"]["lvs"] == []
    finally:
        fleet.minions["hostD"].start()
    wait_for(lambda: fleet.cli.run("test.ping", minion_tgt="hostD").data is True, "hostD back")


def test_rotating_a_pairs_secret(fleet):
    """README "DRBD secret": a new secret, then the pair's orchestrate; the other pair keeps its own."""
    old, other = fleet.secret("two"), fleet.secret("default")
    res_a = fleet.lab.hosts["hostA"].run(["cat", "/etc/drbd.d/fa1.res"]).stdout
    (fleet.cache / "two" / "drbd-secret").unlink()
    ret = fleet.run.run("state.orchestrate", "pairvm.orch.apply", 'pillar={"pairvm_pair": "two"}')
    assert ret.returncode == 0, ret
    new = fleet.secret("two")
    assert new != old and fleet.secret("default") == other
    for name in PAIRS["two"]:
        host = fleet.lab.hosts[name]
        assert f'shared-secret "{new}";' in host.run(["cat", "/etc/drbd.d/fc3.res"]).stdout
        assert re.search(rf'shared-secret\s+"?{new}"?;', host.run(["drbdsetup", "show", "fc3"]).stdout)
    wait_for(lambda: fleet.in_sync("fc3", "two"), "fc3 connected with the new secret")
    assert fleet.lab.hosts["hostA"].run(["cat", "/etc/drbd.d/fa1.res"]).stdout == res_a
    verify = fleet.run.run("pairvm.verify", "pair=two")
    assert (verify.returncode, verify.data["lines"]) == (0, [])
