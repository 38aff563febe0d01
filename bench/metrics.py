"""How one metrics collection (``pairvm.metrics``) scales with the number of VMs.

On one lab host (hostA, as ``bench.vm_scale`` sets it up: VMs defined in
pillar, created through ``pairvm.vms``), one ``salt-call --local
pairvm.metrics`` with 1, 50 and 200 VMs defined: wall time and external
processes spawned (execve, counted with strace; salt-call itself
excluded). Targets (full run): the number of processes does not grow with
the VMs (DRBD, libvirt and LVM are queried once each), and the time for
200 VMs is at most 2 times the time for 1. ``--quick`` runs 1 and 5 VMs and
prints, without judging.
"""

import sys
import time

import salt.utils.yaml
from bench import vm_scale
from tests.lab import lab as labmod
from tests.lab.saltlab import SaltCall

COUNTS, QUICK_COUNTS = (1, 50, 200), (1, 5)
RUNS = 3  # collections per count; the fastest is kept (Salt's own start-up time varies)


def main(quick=False):
    counts = QUICK_COUNTS if quick else COUNTS
    lab = labmod.Lab(("hostA",), pv_size_mib=max(counts) * vm_scale.DISC_MIB + 256)
    lab.up()
    host = lab.hosts["hostA"]
    pillar_dir = host.dir / "bench-pillar"
    pillar_dir.mkdir()
    figures = {}
    try:
        vm_scale._configure(host, pillar_dir)
        SaltCall(host)("saltutil.sync_all")
        print("{:>5} {:>8} {:>10} {:>13}".format("VMs", "setup s", "metrics s", "metrics procs"))
        for count in counts:
            (pillar_dir / "bench.sls").write_text(salt.utils.yaml.safe_dump(vm_scale._pillar(count)))
            start = time.monotonic()
            SaltCall(host)("state.apply", "pairvm.vms", timeout=1800)
            setup = time.monotonic() - start
            wall = min(vm_scale._timed(host, "pairvm.metrics") for _ in range(RUNS))
            procs = vm_scale._processes(host, "pairvm.metrics")
            figures[count] = (wall, procs)
            print(f"{count:>5} {setup:>8.1f} {wall:>10.2f} {procs:>13}", flush=True)
    finally:
        lab.down()
    if not quick:
        first, last = figures[counts[0]], figures[counts[-1]]
        ratio = last[0] / first[0]
        constant = len({p for _, p in figures.values()}) == 1
        print(f"time {counts[-1]} VMs / {counts[0]} VM: {ratio:.2f} (target <= 2.00); processes constant: "
              f"{constant}")
        if ratio > 2 or not constant:
            sys.exit(1)


if __name__ == "__main__":
    main(quick="--quick" in sys.argv[1:])
