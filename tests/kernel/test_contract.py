"""The shims' contract: one DRBD/LVM scenario, run on the namespace lab's shims
and on the kernel lab's real DRBD 8.4 and LVM; what the product reads at every
step must be the same.

The scenario drives the product's own functions (salt-call in each lab's
hosts). After each step it waits until both hosts are settled (the shim's
resync takes 1 s, the kernel's a few), then reads what the product reads,
``pairvm.facts`` on both hosts (DRBD roles, connection and disc states,
split-brain detection; LV list; /machines), and keeps the fields the product
decides on. The two labs run side by side (threads). A difference fails
the test, naming the step, the host and the field: fix the shim.
"""

import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.kernel import conftest as kconf
from tests.kernel.storage import events, product_drbd
from tests.lab import namespaces

NAME = "kc1"
MINOR = 3
DRBD_FIELDS = ("role", "peer_role", "connection", "replication", "disk", "peer_disk", "minor",
               "volume", "suspended", "standalone", "split_brain", "connected", "syncing", "up_to_date")


def reading(fact):
    """What the product decides on, out of one host's pairvm.facts."""
    lvs = {re.sub(r"-sb-\d{14}$", "-sb-TIME", lv): mib for lv, mib in fact["lvs"].items() if NAME in lv}
    drbd = fact["drbd"].get(NAME)
    return {
        "drbd": {k: drbd.get(k) for k in DRBD_FIELDS} if drbd else None,
        "lvs": lvs,
        "machines": sorted(fact["machines"]),
        "errors": sorted(k for k in fact["errors"] if k in ("drbd", "lvs", "machines")),
    }


class Side:
    """One lab as the scenario sees it: two hosts with ``.salt``, a way to
    read DRBD quickly (for waiting) and to write data onto /dev/drbdN."""

    def __init__(self, label, hosts, events_of, write):
        self.label, self.hosts, self.events_of, self.write = label, hosts, events_of, write
        self.readings = []

    def wait(self, names, timeout=90, **want):
        deadline = time.monotonic() + timeout
        while True:
            got = {h: self.events_of(self.hosts[h]) for h in names}
            if all(all(g.get(k) == v for k, v in want.items()) for g in got.values()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.label}: waited {timeout}s for {want}: {got}")
            time.sleep(0.2)

    def wait_marked(self, timeout=30):
        deadline = time.monotonic() + timeout
        while not all((h.root / f"var/lib/pairvm/split-brain/{NAME}").exists() for h in self.hosts.values()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.label}: no split-brain mark after {timeout}s")
            time.sleep(0.2)

    def read(self, step):
        with ThreadPoolExecutor(2) as pool:
            facts = dict(zip(self.hosts, pool.map(lambda h: h.salt("pairvm.facts"), self.hosts.values()),
                             strict=True))
        self.readings.append((step, {h: reading(f) for h, f in facts.items()}))


def scenario(side):
    """The contract scenario; ``side.readings`` gets one reading per step."""
    a, b = side.hosts["hostA"], side.hosts["hostB"]
    settled = {"connection": "Connected", "disk": "UpToDate", "peer_disk": "UpToDate"}
    b.salt("pairvm.create", NAME)
    a.salt("pairvm.create", NAME)
    side.wait(("hostA", "hostB"), **settled)
    side.read("created on both, initial sync done")
    a.salt("drbd.primary", NAME)
    side.read("promoted on hostA")
    a.salt("drbd.disconnect", NAME)
    side.wait(("hostB",), connection="Connecting")
    side.read("disconnected on hostA")
    a.salt("drbd.connect", NAME)
    side.wait(("hostA", "hostB"), **settled)
    side.read("connected again")
    for h in (a, b):
        h.salt("drbd.disconnect", NAME)
    side.wait(("hostA", "hostB"), connection="StandAlone")
    side.read("disconnected on both")
    b.salt("drbd.primary", NAME)
    side.write(a)
    side.write(b)
    for h in (a, b):
        h.salt("drbd.secondary", NAME)
    for h in (a, b):
        h.salt("drbd.connect", NAME)
    side.wait(("hostA", "hostB"), connection="StandAlone")
    side.wait_marked()
    side.read("split brain")
    b.salt("pairvm.split_brain_victim", NAME)
    a.salt("drbd.connect", NAME)
    side.wait(("hostA", "hostB"), **settled)
    side.read("hostB discarded its changes, resynced")
    (snap,) = [lv for lv in b.salt("pairvm.facts")["lvs"] if "-sb-" in lv]
    b.salt("lvm.lvremove", snap.split("/")[1], snap.split("/")[0])
    for h in (a, b):
        h.salt("pairvm.destroy", NAME, "confirm=True")
    side.read("destroyed on both")


def kernel_side(lab):
    return Side("kernel lab", lab.hosts, lambda h: events(h, NAME),
                lambda h: h.guest_sh(f"dd if=/dev/urandom of=/dev/drbd{MINOR} bs=1M count=4 "
                                     f"oflag=direct 2>/dev/null"))


def shim_events(host):
    out = host.run(["drbdsetup", "events2", "--now", "all"]).stdout
    return product_drbd._parse_events(out).get(NAME, {})


@pytest.fixture(scope="module")
def shim_lab():
    """hostA and hostB of the namespace lab (shims; no libvirtd: the pillar
    points the product at libvirt's test driver, as in the kernel lab)."""
    from tests.lab import lab as labmod

    lab = labmod.Lab(("hostA", "hostB"), pv_size_mib=384)
    keepers = []
    try:
        start = time.monotonic()
        lab.up(libvirt=False)  # waits while another run holds the namespace lab's lock
        print(f"\nnamespace lab (shims) up in {time.monotonic() - start:.1f} s, including any wait "
              f"for {labmod.LOCK_PATH}")
        # the DRBD shim reaches a host's /dev and runs the kernel's helpers
        # through a process living in the host (libvirtd, in the full lab)
        keepers = [subprocess.Popen(h.argv(["sleep", "3600"])) for h in lab.hosts.values()]
        pillar_dir, tree = kconf.write_pillar_and_tree(labmod.DATA / "contract")
        for host in lab.hosts.values():
            kconf.write_minion_config(host, tree, pillar_dir)
        yield lab
    finally:
        for h in lab.hosts.values():
            if namespaces.netns_path(h.name).exists():
                h.run(["drbdadm", "down", "all"], check=False)
        for keeper in keepers:
            keeper.kill()
            keeper.wait()
        lab.down()


def differences(kernel, shim):
    """Lines naming each step/host/field where the shim's reading is not the kernel's."""
    lines = []
    for (step, real), (shim_step, fake) in zip(kernel, shim, strict=True):
        assert step == shim_step
        for host in real:
            for key in real[host]:
                want, got = real[host][key], fake[host][key]
                if key == "drbd" and want and got:
                    lines += [f"{step}: {host} drbd.{f}: kernel {want[f]!r}, shim {got[f]!r}"
                              for f in DRBD_FIELDS if want[f] != got[f]]
                elif want != got:
                    lines.append(f"{step}: {host} {key}: kernel {want!r}, shim {got!r}")
    return lines


def test_the_shims_answer_what_real_drbd_and_lvm_answer(kernel_lab, shim_lab):
    start = time.monotonic()
    real = kernel_side(kernel_lab)
    fake = Side("namespace lab", shim_lab.hosts, shim_events,
                lambda h: h.run(["dd", "if=/dev/urandom", f"of=/dev/drbd{MINOR}", "bs=1M", "count=4",
                                 "oflag=direct", "status=none"]))
    with ThreadPoolExecutor(2) as pool:
        for done in [pool.submit(scenario, side) for side in (real, fake)]:
            done.result()
    print(f"\ncontract scenario: {len(real.readings)} steps on both labs in {time.monotonic() - start:.1f} s")
    # the scenario means what it says on the real kernel
    steps = dict(real.readings)
    assert steps["disconnected on hostA"]["hostA"]["drbd"]["split_brain"] is False
    assert steps["disconnected on hostA"]["hostB"]["drbd"]["connection"] == "Connecting"
    assert all(steps["split brain"][h]["drbd"]["split_brain"] for h in ("hostA", "hostB"))
    assert steps["hostB discarded its changes, resynced"]["hostB"]["lvs"] == {
        "there/kc1": 64, "there/kc1-sb-TIME": 64}
    assert steps["destroyed on both"]["hostA"] == {"drbd": None, "lvs": {}, "machines": [], "errors": []}
    assert differences(real.readings, fake.readings) == []


def test_a_wrong_shim_answer_is_caught():
    """The comparison itself: a shim that called the peer of a disconnect
    StandAlone (real 8.4: Connecting, i.e. WFConnection) is reported."""
    def step(connection):
        drbd = dict.fromkeys(DRBD_FIELDS, None) | {"connection": connection}
        return [("disconnected on hostA",
                 {"hostB": {"drbd": drbd, "lvs": {}, "machines": ["kc1"], "errors": []}})]

    real, fake = step("Connecting"), step("StandAlone")
    assert differences(real, fake) == [
        "disconnected on hostA: hostB drbd.connection: kernel 'Connecting', shim 'StandAlone'"]
    assert differences(real, real) == []


