"""How pairvm's steady state scales with the number of VMs.

On one lab host (hostA; its peer hostB is only named, so DRBD waits for it),
VMs are defined in pillar with their allocations, created through the
product's own state (pairvm.vms), then measured with 1, 50 and 200 VMs:

- ``state.apply pairvm.vms``: the steady-state apply (nothing to change);
- ``pairvm.list``.

For each it prints the wall time and the number of external processes the
run spawned (execve, counted with strace, salt-call itself excluded; Salt's
grains account for a constant part). That number must not grow with the
number of VMs: LVM, DRBD and libvirt are queried once per run.
"""

import re
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
DISC_MIB = 16


def _pillar(count):
    """pillar pairvm: the lab pair's settings, ``count`` stopped VMs and their allocations."""
    with open(REPO / "pillar" / "pairvm.sls", encoding="utf-8") as fh:
        pairvm = salt.utils.yaml.safe_load(fh)["pairvm"]
    pairvm.update(memory_cap=0, drbd={"port_range": [7800, 8199], "minor_range": [0, 399]},
                  vnc={"display_range": [1, 400]})
    pairvm["vms"] = {f"b{i:03d}": {"home": "hostA", "memory": 64, "disc": f"{DISC_MIB}M",
                                   "state": "stopped"} for i in range(count)}
    registry = alloc.allocate(schema.settings(pairvm), schema.vms(pairvm), {})
    pairvm["allocations"] = {name: entry["alloc"] for name, entry in registry["vms"].items()}
    return {"pairvm": pairvm}


def _measure(host, *args):
    """Wall time of one salt-call, and the processes it spawned (strace execve)."""
    trace = "/tmp/pvlab-bench.strace"
    start = time.monotonic()
    host.run(["strace", "-f", "-qq", "-e", "trace=execve", "-o", trace, "salt-call", "--local",
              "--out=quiet", "--retcode-passthrough", *args], timeout=1200)
    wall = time.monotonic() - start
    lines = host.run(["cat", trace]).stdout.splitlines()
    host.run(["rm", "-f", trace])
    return wall, sum(1 for ln in lines if re.search(r"execve\(.*\) = 0", ln)) - 1


def _configure(host, pillar_dir):
    minion = {"id": "hostA", "file_client": "local", "root_dir": str(host.dir / "salt"),
              "file_roots": {"base": [str(saltlab.file_tree(host.dir / "srv"))]},
              "pillar_roots": {"base": [str(pillar_dir)]}}
    (host.root / "etc/salt/minion").write_text(salt.utils.yaml.safe_dump(minion))
    (pillar_dir / "top.sls").write_text("base:\n  '*':\n    - bench\n")


def main(quick=False):
    counts = QUICK_COUNTS if quick else COUNTS
    lab = labmod.Lab(("hostA",), pv_size_mib=max(counts) * DISC_MIB + 256)
    lab.up()
    host = lab.hosts["hostA"]
    pillar_dir = host.dir / "bench-pillar"
    pillar_dir.mkdir()
    try:
        _configure(host, pillar_dir)
        SaltCall(host)("saltutil.sync_all")
        header = ("VMs", "setup s", "apply s", "apply procs", "list s", "list procs")
        print("{:>5} {:>8} {:>8} {:>12} {:>7} {:>11}".format(*header))
        for count in counts:
            (pillar_dir / "bench.sls").write_text(salt.utils.yaml.safe_dump(_pillar(count)))
            start = time.monotonic()
            SaltCall(host)("state.apply", "pairvm.vms", timeout=1800)
            setup = time.monotonic() - start
            apply_s, apply_p = _measure(host, "state.apply", "pairvm.vms")
            list_s, list_p = _measure(host, "pairvm.list")
            print(f"{count:>5} {setup:>8.1f} {apply_s:>8.2f} {apply_p:>12} {list_s:>7.2f} {list_p:>11}",
                  flush=True)
    finally:
        lab.down()


if __name__ == "__main__":
    main(quick="--quick" in sys.argv[1:])
