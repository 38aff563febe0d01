"""How pairvm's steady state scales with the number of VMs, against Salt's own cost.

On one lab host (hostA; its peer hostB is only named, so DRBD waits for it),
VMs are defined in pillar with their allocations, created through the
product's own state (pairvm.vms), then measured with 1, 50 and 200 VMs:

- ``state.apply pairvm.vms``: the steady-state apply (nothing to change), 2
  states per VM (present, stopped);
- beside it, in the same run and with the same minion, grains and pillar,
  ``state.apply`` of as many ``test.succeed_without_changes`` states: what
  Salt itself costs for that number of states. Target: the pairvm apply of
  200 VMs at most 1.5 times that (``ratio``), the median of 3 runs each,
  taken in turns;
- ``pairvm.list``.

For each it prints the wall time and, in a separate run under strace, the
number of external processes it spawned (execve, salt-call itself
excluded; Salt's grains account for a constant part). That number must not
grow with the number of VMs: LVM, DRBD and libvirt are queried once per run.
"""

import re
import statistics
import sys
import time

import salt.utils.yaml
from pairvmlib import alloc, schema
from tests.lab import lab as labmod
from tests.lab import saltlab
from tests.lab.hosts import REPO
from tests.lab.saltlab import SaltCall

# full run, and --quick (the bench tier of ./scripts/test: it runs and prints, no target)
COUNTS, QUICK_COUNTS = (1, 50, 200), (1, 5)
ROUNDS, QUICK_ROUNDS = 3, 1
TARGET = 1.5
DISC_MIB = 16
NOOP = "pairvm_bench_noop"


def _pillar(count):
    """pillar pairvm: the lab pair's settings, ``count`` stopped VMs, their allocations and the
    pair's DRBD secret (as the master's ext_pillar serves them)."""
    with open(REPO / "pillar" / "pairvm.sls", encoding="utf-8") as fh:
        pairvm = salt.utils.yaml.safe_load(fh)["pairvm"]
    pairvm.update(memory_cap=0, drbd={"port_range": [7800, 8199], "minor_range": [0, 399]},
                  vnc={"display_range": [1, 400]})
    pairvm["drbd_options"]["shared_secret"] = "bench-secret"
    pairvm["vms"] = {f"b{i:03d}": {"home": "hostA", "memory": 64, "disc": f"{DISC_MIB}M",
                                   "state": "stopped"} for i in range(count)}
    registry = alloc.allocate(schema.settings(pairvm), schema.vms(pairvm), {})
    pairvm["allocations"] = {name: entry["alloc"] for name, entry in registry["vms"].items()}
    return {"pairvm": pairvm}


def _salt_call(*args, strace=None):
    argv = ["salt-call", "--local", "--out=quiet", "--retcode-passthrough", *args]
    return ["strace", "-f", "-qq", "-e", "trace=execve", "-o", strace, *argv] if strace else argv


def _timed(host, *args):
    """Wall time of one salt-call."""
    start = time.monotonic()
    host.run(_salt_call(*args), timeout=1200)
    return time.monotonic() - start


def _processes(host, *args):
    """The processes one salt-call spawned (strace execve)."""
    trace = "/tmp/pvlab-bench.strace"
    host.run(_salt_call(*args, strace=trace), timeout=1200)
    lines = host.run(["cat", trace]).stdout.splitlines()
    host.run(["rm", "-f", trace])
    return sum(1 for ln in lines if re.search(r"execve\(.*\) = 0", ln)) - 1


def _configure(host, pillar_dir):
    minion = {"id": "hostA", "file_client": "local", "root_dir": str(host.dir / "salt"),
              "file_roots": {"base": [str(saltlab.file_tree(host.dir / "srv"))]},
              "pillar_roots": {"base": [str(pillar_dir)]}}
    (host.root / "etc/salt/minion").write_text(salt.utils.yaml.safe_dump(minion))
    (pillar_dir / "top.sls").write_text("base:\n  '*':\n    - bench\n")


def _noop_sls(host, states):
    (host.dir / "srv" / f"{NOOP}.sls").write_text(
        "".join(f"noop-{i}:\n  test.succeed_without_changes: []\n" for i in range(states)))


def main(quick=False):
    counts, rounds = (QUICK_COUNTS, QUICK_ROUNDS) if quick else (COUNTS, ROUNDS)
    lab = labmod.Lab(("hostA",), pv_size_mib=max(counts) * DISC_MIB + 256)
    lab.up()
    host = lab.hosts["hostA"]
    pillar_dir = host.dir / "bench-pillar"
    pillar_dir.mkdir()
    try:
        _configure(host, pillar_dir)
        SaltCall(host)("saltutil.sync_all")
        header = ("VMs", "states", "setup s", "apply s", "noop s", "ratio", "apply procs", "list s",
                  "list procs")
        print("{:>5} {:>6} {:>8} {:>8} {:>7} {:>6} {:>12} {:>7} {:>11}".format(*header))
        for count in counts:
            (pillar_dir / "bench.sls").write_text(salt.utils.yaml.safe_dump(_pillar(count)))
            _noop_sls(host, 2 * count)
            start = time.monotonic()
            SaltCall(host)("state.apply", "pairvm.vms", timeout=1800)
            setup = time.monotonic() - start
            applies, noops = [], []
            for _ in range(rounds):  # in turns, so a change in the machine's load hits both
                applies.append(_timed(host, "state.apply", "pairvm.vms"))
                noops.append(_timed(host, "state.apply", NOOP))
            apply_s, noop_s = statistics.median(applies), statistics.median(noops)
            list_s = _timed(host, "pairvm.list")
            apply_p, list_p = _processes(host, "state.apply", "pairvm.vms"), _processes(host, "pairvm.list")
            print(f"{count:>5} {2 * count:>6} {setup:>8.1f} {apply_s:>8.2f} {noop_s:>7.2f} "
                  f"{apply_s / noop_s:>6.2f} {apply_p:>12} {list_s:>7.2f} {list_p:>11}", flush=True)
        if not quick:
            print(f"apply of {count} VMs / {2 * count} test.succeed_without_changes states: "
                  f"x{apply_s / noop_s:.2f} (target <= {TARGET}: "
                  f"{'met' if apply_s / noop_s <= TARGET else 'MISSED'})")
    finally:
        lab.down()


if __name__ == "__main__":
    main(quick="--quick" in sys.argv[1:])
