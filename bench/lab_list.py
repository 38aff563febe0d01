"""How the lab and ``pairvm.list`` scale.

Prints: the time to bring a one-host lab up and down (warm caches), and the
wall time and number of external processes spawned by ``pairvm.list`` with 0,
1, 50 and 200 VMs defined on the host. The process count must not grow with
the number of VMs (LVM, DRBD and libvirt are queried once per call).
"""

import re
import time

import salt.utils.yaml
from tests.functional.conftest import SaltCall
from tests.lab import lab as labmod
from tests.lab import saltlab
from tests.lab.hosts import REPO

COUNTS = (0, 1, 50, 200)


def _define_vms(host, count):
    host.run(["sh", "-c", "rm -f /machines/vm*"])
    for i in range(count):
        text = salt.utils.yaml.safe_dump({
            "name": f"vm{i}", "home": "hostA", "memory": 128, "disc": "1G",
            "mac": f"52:54:00:00:{i // 256:02x}:{i % 256:02x}", "ip": f"10.79.{i // 250}.{i % 250 + 4}",
            "vnc_display": i + 1,
        })
        (host.root / "machines" / f"vm{i}").write_text(text)


def _count_execs(host, function):
    """Wall time of one salt-call, and the processes it spawned (strace execve)."""
    trace = "/tmp/pvlab-bench.strace"
    start = time.monotonic()
    host.run(["strace", "-f", "-qq", "-e", "trace=execve", "-o", trace, "salt-call", "--local",
              "--out=quiet", function])
    wall = time.monotonic() - start
    lines = host.run(["cat", trace]).stdout.splitlines()
    host.run(["rm", "-f", trace])
    execs = [ln for ln in lines if re.search(r"execve\(.*\) = 0", ln)]
    return wall, len(execs) - 1  # minus salt-call itself


def main():
    lab = labmod.Lab(("hostA",))
    start = time.monotonic()
    lab.up()
    up = time.monotonic() - start
    host = lab.hosts["hostA"]
    try:
        minion = {"id": "hostA", "file_client": "local", "root_dir": str(host.dir / "salt"),
                  "file_roots": {"base": [str(saltlab.file_tree(host.dir / "srv"))]},
                  "pillar_roots": {"base": [str(REPO / "pillar")]}}
        (host.root / "etc/salt/minion").write_text(salt.utils.yaml.safe_dump(minion))
        SaltCall(host)("saltutil.sync_all")
        print(f"lab (one host) up: {up:.2f} s")
        print(f"{'VMs':>5} {'pairvm.list wall s':>19} {'processes spawned':>18}")
        for count in COUNTS:
            _define_vms(host, count)
            wall, procs = _count_execs(host, "pairvm.list")
            print(f"{count:>5} {wall:>19.2f} {procs:>18}")
    finally:
        start = time.monotonic()
        lab.down()
        print(f"lab down: {time.monotonic() - start:.2f} s")


if __name__ == "__main__":
    main()
