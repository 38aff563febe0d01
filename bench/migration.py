"""Live migration in the lab pair: total time and downtime, idle and loaded; evacuation.

The lab pair with a real salt-master and two minions (the demo's plain
daemons), each host's sshd on its admin address, the test guest (128 MiB,
TCG). Every move is the product's: ``salt-run pairvm.migrate`` and
``salt-run pairvm.evacuate``/``pairvm.return``. Figures:

- an idle guest moved away and back: libvirt's total time and downtime of
  each migration (``domjobinfo --completed``, as ``pairvm.migrate`` returns
  them); target: downtime at most 50 ms (raw QEMU migration here: 44 ms);
- the same guest rewriting 64 MiB of its memory all the time
  (``pairvm.memload=64``): the same figures;
- evacuating N VMs (``salt-run pairvm.evacuate hostA``, then ``pairvm.return``)
  against the sum of the same VMs' single migrations (``salt-run
  pairvm.migrate`` each, wall time); target: at most 1.2 times the sum.

``--quick`` (the bench tier): one round each, two VMs to evacuate; it prints,
it checks no target.
"""

import json
import statistics
import sys
import time

from tests.lab import demo
from tests.lab import lab as labmod

ROUNDS, QUICK_ROUNDS = 5, 1
EVACUATE, QUICK_EVACUATE = 5, 2
GUEST = {"kernel": "/var/lib/libvirt/boot/pairvm-guest-vmlinuz",
         "initrd": "/var/lib/libvirt/boot/pairvm-guest-initrd.img"}


def salt(*args):
    return demo._salt_json("salt", *args)


def salt_run(*args):
    return demo._salt_json("salt-run", *args)


def _create(name, cmdline):
    options = dict(GUEST, cmdline=f"console=ttyS0 pairvm.hostname={name} {cmdline}".strip())
    ret = salt_run("pairvm.create", name, "hostA", "128", "16M", "state=stopped",
                   f"hypervisor_options={json.dumps(options)}")
    if "error" in ret:
        raise RuntimeError(f"create {name}: {ret['error']}")


def _in_sync(names):
    """Every one of ``names`` Connected and UpToDate on both hosts (one salt call for all)."""
    hosts = list(salt("*", "drbd.status").values())
    return len(hosts) == 2 and all(
        isinstance(states, dict) and states.get(n, {}).get("connection") == "Connected"
        and states[n].get("peer_disk") == "UpToDate" for states in hosts for n in names)


def _start(lab, names):
    deadline = time.monotonic() + 120
    while not _in_sync(names):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{names} did not sync")
        time.sleep(1)
    for name in names:
        salt("hostA", "pairvm.start", name)
    demo._wait_for_boot(lab, {n: "hostA" for n in names})


def _migrate(name, **kwargs):
    """One salt-run pairvm.migrate: (wall s, libvirt's figures)."""
    start = time.monotonic()
    ret = salt_run("pairvm.migrate", name, *(f"{k}={v}" for k, v in kwargs.items()))
    wall = time.monotonic() - start
    if "error" in ret:
        raise RuntimeError(f"migrate {name}: {ret['error']}")
    return wall, next(iter(ret.values()))["migration"]


def _rounds(name, rounds):
    """Away and back ``rounds`` times: [(time_ms, downtime_ms)] of each migration."""
    figures = []
    for _ in range(rounds):
        for away in (True, False):
            figures.append(_migrate(name, away=away)[1])
    return [(f["time_ms"], f["downtime_ms"]) for f in figures]


def _show(title, figures):
    times, downs = zip(*figures, strict=True)
    print(f"{title:<28} {len(figures):>3} moves  time ms median {statistics.median(times):>6.0f} "
          f"max {max(times):>6.0f}  downtime ms median {statistics.median(downs):>5.0f} "
          f"max {max(downs):>5.0f}", flush=True)


def main(quick=False):
    rounds = QUICK_ROUNDS if quick else ROUNDS
    count = QUICK_EVACUATE if quick else EVACUATE
    lab = labmod.Lab().up()
    try:
        demo.start_salt(lab)
        salt_run("fileserver.update")
        salt_run("saltutil.sync_all")
        salt("*", "saltutil.sync_all")
        salt_run("state.orchestrate", "pairvm.orch.host")
        _create("bidle", "")
        _create("bload", "pairvm.memload=64")
        _start(lab, ["bidle", "bload"])
        print("live migration of the 128 MiB test guest (TCG), salt-run pairvm.migrate; "
              "target: idle downtime <= 50 ms", flush=True)
        _show("idle", _rounds("bidle", rounds))
        _show("rewriting 64 MiB", _rounds("bload", rounds))
        for name in ("bidle", "bload"):
            salt("hostA", "pairvm.stop", name)
        names = [f"bev{i}" for i in range(count)]
        for name in names:
            _create(name, "")
        _start(lab, names)
        singles = 0.0
        for name in names:
            singles += _migrate(name, away=True)[0]
            _migrate(name)
        start = time.monotonic()
        ret = salt_run("pairvm.evacuate", "hostA")
        evacuate = time.monotonic() - start
        if ret.get("not_moved"):
            raise RuntimeError(f"evacuate: {ret['not_moved']}")
        salt_run("pairvm.return", "hostA")
        print(f"evacuate {count} VMs: {evacuate:.1f} s; their single migrations: {singles:.1f} s in all; "
              f"ratio {evacuate / singles:.2f} (target <= 1.2)", flush=True)
    finally:
        lab.down()

if __name__ == "__main__":
    main(quick="--quick" in sys.argv[1:])
