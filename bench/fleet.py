"""The master's side of many pairs: how its work grows with pairs and VMs.

A master with 1 pair x 100 VMs and one with 50 pairs x 100 VMs (``--quick``:
1 and 5 pairs x 20 VMs), everything generated: each pair's pillar (its own
hosts, the same pool on a public network of its own, VMs defined in pillar),
its registry and DRBD secret (allocated and saved by the product's own
``alloc.allocate_pair`` and ``registry.locked``, in a temporary cachedir),
and what each host would answer (``pairvm.list`` rows, ``pairvm.facts`` built
from the real records). No minion runs: the runner's calls go to a stand-in
LocalClient that returns those answers at once, and the master's pillar
compile is the generated pillar with the real ``pairvm_registry`` ext_pillar
merged in. Measured as this process's CPU time (``time.process_time``: the
machine is shared, and wall time here moves with the other loads), the best
of several runs each (at least 5, more while they take under 1 s together):

- allocating one more VM (``registry.locked`` + ``alloc.allocate_pair``,
  what ``salt-run pairvm.create`` does on the master);
- ``salt-run pairvm.list`` of all VMs (the runner's ``list``: one ping,
  one publish, the merge), per VM;
- ``salt-run pairvm.verify`` of all VMs (the runner's ``verify``: each
  pair's pillar and registry, the analysis, the checks between pairs), per VM;
- the ext_pillar for one minion.

Targets (full run): per VM, list and verify with 5,000 VMs at most 1.5 times
what they cost with 100; the ext_pillar for one minion at most 1.2 times
with 50 pairs what it costs with one.
"""

import copy
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "_utils"))

from pairvmlib import alloc, master, registry, render, schema  # noqa: E402

FULL, QUICK = ((1, 100), (50, 100)), ((1, 20), (5, 20))
TARGETS = {"list": 1.5, "verify": 1.5, "ext_pillar": 1.2}


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pair_pillar(index, vms):
    hosts = (f"p{index}a", f"p{index}b")
    return {
        "pair_name": f"p{index}",
        "pair": {host: {"admin_ip": f"10.{index // 200 + 1}.{index % 200}.{n + 1}",
                        "replication_ip": f"10.{index // 200 + 101}.{index % 200}.{n + 1}"}
                 for n, host in enumerate(hosts)},
        "pool": {"cidr": "198.18.0.0/23", "gateway": "198.18.0.1", "network": f"net{index}"},
        "vnc": {"display_range": [1, 400]},
        "drbd": {"port_range": [7800, 8199], "minor_range": [0, 399]},
        "domain_type": "qemu",
        "vms": {f"v{index}x{n}": {"home": hosts[n % 2], "memory": 64, "disc": "16M",
                                 "state": "running" if n % 3 else "stopped"} for n in range(vms)},
    }


class Fleet:
    """A generated master: pillars, registries and the hosts' answers."""

    def __init__(self, pairs, vms):
        self.tmp = tempfile.TemporaryDirectory(prefix="pvfleet-")
        self.opts = {"cachedir": self.tmp.name, "conf_file": str(Path(self.tmp.name) / "master")}
        self.pillars = {f"p{i}": pair_pillar(i, vms) for i in range(pairs)}
        self.owner = {host: name for name, p in self.pillars.items() for host in p["pair"]}
        self.answers = {}
        for name, pillar in self.pillars.items():
            settings, definitions = schema.settings(pillar), schema.vms(pillar)
            with registry.locked(self.opts, name) as box:
                box["registry"] = alloc.allocate_pair(settings, definitions, box["registry"], box["others"])
                registry.ensure_secret(self.opts, name)
                saved = box["registry"]
            for host in settings["pair"]:
                self.answers[host] = self._answers(host, settings, definitions, saved)
        self.ext = _load("_pillar/pairvm_registry.py", "bench_fleet_ext_pillar")
        self.ext.__opts__ = self.opts
        self.runner = _load("_runners/pairvm.py", "bench_fleet_runner")
        self.runner.__opts__, self.runner.__context__ = self.opts, {}
        master.salt.client.get_local_client = lambda conf_file=None, **kwargs: self
        master.Master.compile = lambda _, minion: self.compiled(minion)
        self.vms = pairs * vms

    @staticmethod
    def _answers(host, settings, definitions, saved):
        rows, machines, lvs, running, drbd = [], {}, {}, [], {}
        for name, definition in definitions.items():
            record = schema.record(name, definition, saved["vms"][name]["alloc"], settings)
            here = record["home"] == host and record["state"] == "running"
            vg = record["hosts"][host]["vg"]
            rows.append({"name": name, "memory": record["memory"], "disc": record["disc_mib"],
                         "running": here, "location": "home", "vnc_display": record["vnc_display"],
                         "drbd_connection": "Connected", "drbd_disk": "UpToDate", "mac": record["mac"],
                         "ip": record["ip"]})
            machines[name] = {"digest": render.machines_digest(schema.dump_record(record)),
                              "home": record["home"], "peer": record["peer"], "memory": record["memory"],
                              "state": record["state"], "suppress": False, "bridge": record["bridge"],
                              "vnc_display": record["vnc_display"], "vg": vg}
            lvs[f"{vg}/{name}"] = record["disc_mib"]
            running += [name] if here else []
            drbd[name] = {"role": "Primary" if here else "Secondary", "connection": "Connected",
                          "disk": "UpToDate", "peer_disk": "UpToDate", "split_brain": False}
        facts = {"host": host, "machines": machines, "suppressed": [], "drbd": drbd,
                 "drbd_auth": dict.fromkeys(machines, True), "running": running,
                 "vnc": dict.fromkeys(running, "127.0.0.1"), "lvs": lvs,
                 "volume_groups": {"here": {}, "there": {}}, "tools_missing": [],
                 "bridges": {"br0": {"present": True, "state": "up"}}, "errors": {}}
        return {"test.ping": True, "pairvm.list": {"vms": rows, "memory": {}}, "pairvm.facts": facts}

    def compiled(self, minion):
        """The master's pillar of a minion: its pair's pillar, the real ext_pillar merged in."""
        pairvm = copy.deepcopy(self.pillars[self.owner[minion]])
        ext = self.ext.ext_pillar(minion, {"pairvm": copy.deepcopy(pairvm)})["pairvm"]
        pairvm["vms"].update(ext["vms"])
        pairvm["allocations"] = ext["allocations"]
        pairvm["drbd_options"] = ext.get("drbd_options", {})
        return {"pairvm": pairvm}

    def cmd(self, tgt, fun, arg=(), **kwargs):
        """The stand-in LocalClient: every host answers at once."""
        return {host: {"ret": self.answers[host][fun], "retcode": 0} for host in tgt}

    def one_more_vm(self):
        name = "p0"
        pillar = copy.deepcopy(self.pillars[name])
        pillar["vms"]["extra"] = {"home": "p0a", "memory": 64, "disc": "16M"}
        settings, definitions = schema.settings(pillar), schema.vms(pillar)
        with registry.locked(self.opts, name) as box:
            updated = alloc.allocate_pair(settings, definitions, box["registry"], box["others"])
        return updated["vms"]["extra"]["alloc"]

    def close(self):
        self.tmp.cleanup()


def best(func, repeat, budget=1.0):
    """The best time of ``repeat`` runs, more while they take under ``budget`` seconds together
    (a fast case gets as many samples as a slow one has time)."""
    times, spent = [], 0.0
    while len(times) < repeat or spent < budget:
        start = time.process_time()
        result = func()
        times.append(time.process_time() - start)
        spent += times[-1]
    return min(times), result


def measure(pairs, vms, repeat, budget):
    fleet = Fleet(pairs, vms)
    try:
        figures = {"pairs": pairs, "vms": fleet.vms}
        figures["allocate"], extra = best(fleet.one_more_vm, repeat, budget)
        assert extra["ip"] and extra["mac"]
        figures["list"], listed = best(fleet.runner.list_, repeat, budget)
        assert len(listed["vms"]) == fleet.vms and not listed["unreachable"], listed.get("error")
        figures["verify"], verified = best(fleet.runner.verify, repeat, budget)
        assert verified["ok"] and verified["pairs"] == sorted(fleet.pillars), verified.get("lines")
        minion = "p0a"
        pillar = {"pairvm": copy.deepcopy(fleet.pillars["p0"])}
        figures["ext_pillar"], served = best(lambda: fleet.ext.ext_pillar(minion, pillar), repeat, budget)
        assert len(served["pairvm"]["allocations"]) == vms
        return figures
    finally:
        fleet.close()


def main(quick=False):
    sizes = QUICK if quick else FULL
    repeat, budget = (3, 0.1) if quick else (5, 1.0)
    rows = [measure(pairs, vms, repeat, budget) for pairs, vms in sizes]
    print("{:>6} {:>6} {:>12} {:>9} {:>13} {:>9} {:>13} {:>14}".format(
        "pairs", "VMs", "allocate ms", "list s", "list us/VM", "verify s", "verify us/VM", "ext_pillar us"))
    for r in rows:
        per_vm = {key: r[key] / r["vms"] * 1e6 for key in ("list", "verify")}
        print(f"{r['pairs']:>6} {r['vms']:>6} {r['allocate'] * 1e3:>12.1f} {r['list']:>9.3f} "
              f"{per_vm['list']:>13.1f} {r['verify']:>9.3f} {per_vm['verify']:>13.1f} "
              f"{r['ext_pillar'] * 1e6:>14.1f}", flush=True)
    small, large = rows[0], rows[-1]
    ratios = {
        "list": (large["list"] / large["vms"]) / (small["list"] / small["vms"]),
        "verify": (large["verify"] / large["vms"]) / (small["verify"] / small["vms"]),
        "ext_pillar": large["ext_pillar"] / small["ext_pillar"],
    }
    for key, ratio in ratios.items():
        met = "met" if ratio <= TARGETS[key] else "MISSED"
        verdict = "" if quick else f" (target <= {TARGETS[key]}: {met})"
        what = "per VM" if key != "ext_pillar" else "one minion"
        print(f"{key} {what}, {large['pairs']} pairs / {small['pairs']}: x{ratio:.2f}{verdict}")
    return ratios


if __name__ == "__main__":
    main(quick="--quick" in sys.argv[1:])
