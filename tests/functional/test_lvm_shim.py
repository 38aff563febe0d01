"""The lab's LVM shim on real lvm2 and real loop devices, in one lab-like host.

Self-contained: a module-scoped fixture builds a mount+UTS namespace named
hostA (private tmpfs /dev with loop nodes, private /etc/lvm, private /run),
PVLAB_DATA in a temporary directory, PATH starting with tests/lab/shims, and
the host's PVs and VGs through tests/lab/lvm.py. Salt's own ``linux_lvm``
module drives the shims where the product will.

Needs root, lvm2, util-linux (unshare, nsenter, losetup).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.lab import lvm as lablvm
from tests.lab import namespaces

REPO = Path(__file__).resolve().parents[2]
SHIMS = REPO / "tests" / "lab" / "shims"
HOST = "hostA"
MIB = 1024 * 1024
PV_MIB = 512

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, loop devices)"),
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("lvm", "unshare", "nsenter", "losetup")),
        reason="needs lvm2 and util-linux",
    ),
]



SETUP = r"""
set -e
hostname "$1"
mount -t tmpfs -o mode=0755,size=4m pvlab-dev /dev
mknod -m 0666 /dev/null c 1 3
mknod -m 0666 /dev/zero c 1 5
mknod -m 0666 /dev/urandom c 1 9
mknod -m 0660 /dev/loop-control c 10 237
i=0; while [ $i -lt 256 ]; do mknod -m 0660 /dev/loop$i b 7 $i; i=$((i+1)); done
ln -s /proc/self/fd /dev/fd
mount -t tmpfs -o mode=0755 pvlab-run /run
mount --bind "$2" /etc/lvm
echo ready
exec cat >/dev/null
"""


class Host:
    """A lab-like host: mount+UTS namespace held by a process reading our pipe.

    The holder exits when its stdin closes, so even a killed test run leaves
    no namespace behind.
    """

    def __init__(self, data: Path):
        self.data = data
        self.dir = data / HOST
        self.etc_lvm = self.dir / "root" / "etc" / "lvm"
        self.etc_lvm.mkdir(parents=True)
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--uts", "--propagation", "private",
             "sh", "-c", SETUP, "setup", HOST, str(self.etc_lvm)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        line = self.holder.stdout.readline()
        if line.strip() != "ready":
            self.holder.kill()
            raise RuntimeError(f"namespace setup failed: {line}{self.holder.stderr.read()}")
        self.mnt_ns = os.readlink(f"/proc/{self.holder.pid}/ns/mnt")
        lablvm.record_holder(data, self.holder.pid)
        self.env = {
            "PATH": f"{SHIMS}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "PVLAB_DATA": str(data),
            "HOME": "/root",
            "LANG": "C.UTF-8",
        }

    def argv(self, argv, env=None):
        env = self.env if env is None else env
        return ["nsenter", "-t", str(self.holder.pid), "--mount", "--uts",
                "env", "-i", *[f"{k}={v}" for k, v in env.items()], *map(str, argv)]

    def run(self, argv, check=False, env=None, input=None):
        proc = subprocess.run(self.argv(argv, env), capture_output=True, text=True,
                              input=input)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{argv}: rc {proc.returncode}\n{proc.stdout}{proc.stderr}")
        return proc

    def run_checked(self, argv):
        """``run`` for tests/lab/lvm.py: raises on failure like the lab's hosts."""
        return self.run(argv, check=True)

    def sh(self, script):
        return self.run(["sh", "-c", script], check=True).stdout

    def teardown(self):
        """Detach every loop under the data dir, end the namespace, remove the data."""
        detached = lablvm.detach_lab_loops(self.data)
        namespaces.end_holder(self.holder)
        shutil.rmtree(self.data, ignore_errors=True)
        return detached




@pytest.fixture(scope="module")
def host(tmp_path_factory):
    lablvm.reap_killed_runs(tmp_path_factory.getbasetemp(), "pvlab")
    lab = Host(tmp_path_factory.mktemp("pvlab"))
    try:
        lab.pvs = lablvm.create_volume_groups(lab.run_checked, lab.dir, PV_MIB)
        yield lab
    finally:
        lab.teardown()


@pytest.fixture
def origin(host):
    """A fresh 128 MiB LV here/vm1 with a known MiB at offset 5 (its sha256 is returned);
    removed afterwards with whatever snapshots it has. Each test that needs an LV gets its
    own, whatever ran before."""
    host.run(["lvcreate", "-n", "vm1", "-L", "128M", "here"], check=True)
    digest = write_pattern(host, "/dev/here/vm1", 5, "vm1-a")
    yield digest
    for name in ("vm1-snap", "vm1"):
        if ("here", name) in lv_rows(host):
            host.run(["lvremove", "-y", f"here/{name}"], check=True)
    assert lv_rows(host) == {}, "a test left an LV behind"


@pytest.fixture
def snapshot(host, origin):
    """here/vm1-snap, a 16 MiB snapshot of the fresh here/vm1."""
    host.run(["lvcreate", "-s", "-n", "vm1-snap", "-L", "16M", "here/vm1"], check=True)
    return origin


@pytest.fixture(scope="module")
def salt_lvm(host):
    """salt.modules.linux_lvm with __salt__ running argv inside the host."""
    import salt.modules.linux_lvm as linux_lvm

    calls = []

    def run_all(cmd, python_shell=False, ignore_retcode=False, **_kwargs):
        assert python_shell is False
        calls.append(list(cmd))
        proc = host.run(cmd)
        return {"retcode": proc.returncode, "stdout": proc.stdout.rstrip(),
                "stderr": proc.stderr.rstrip(), "pid": 0}

    saved = os.environ["PATH"]
    os.environ["PATH"] = f"{SHIMS}:{saved}"  # salt resolves lvcreate with which()
    linux_lvm.__salt__ = {"cmd.run_all": run_all}
    linux_lvm.calls = calls
    try:
        yield linux_lvm
    finally:
        os.environ["PATH"] = saved
        del linux_lvm.__salt__


# --- helpers -------------------------------------------------------------

def report(host, cmd, *args):
    proc = host.run([cmd, "--reportformat", "json", *args], check=True)
    rows = []
    for part in json.loads(proc.stdout)["report"]:
        for key in ("lv", "vg", "pv"):
            rows += part.get(key, [])
    return rows


def lv_rows(host, *fields):
    return {(r["vg_name"], r["lv_name"]): r
            for r in report(host, "lvs", "-o", ",".join(("vg_name", "lv_name", *fields)))}


def size_of(host, path):
    return int(host.sh(f"blockdev --getsize64 {path}").strip())


def loops_over(path):
    return [dev for dev, back in lablvm.lab_loops(os.path.dirname(path)) if back == str(path)]


def device_of(host, vg, lv):
    """/dev/loopN behind /dev/VG/LV, checked like real LVM's dm symlink."""
    target = host.sh(f"readlink /dev/{vg}/{lv}").strip()
    assert target.startswith("../loop"), target
    dev = "/dev/" + target[3:]
    assert host.sh(f"test -b /dev/{vg}/{lv} && echo block").strip() == "block"
    return dev


def write_pattern(host, path, offset_mib, seed):
    data = hashlib.sha256(seed.encode()).digest() * (MIB // 32)
    proc = subprocess.run(
        host.argv(["dd", f"of={path}", "bs=1M", f"seek={offset_mib}", "conv=notrunc,fsync",
                   "status=none"]),
        input=data, capture_output=True,
    )
    assert proc.returncode == 0, proc.stderr
    return hashlib.sha256(data).hexdigest()


def read_hash(host, path, offset_mib):
    proc = subprocess.run(
        host.argv(["dd", f"if={path}", "bs=1M", f"skip={offset_mib}", "count=1",
                   "iflag=direct", "status=none"]),
        capture_output=True,
    )
    assert proc.returncode == 0, proc.stderr
    return hashlib.sha256(proc.stdout).hexdigest()


def lab_state(host):
    """Everything the shim may leave behind: files, links, loops, LVs."""
    files = sorted(str(p.relative_to(host.dir)) for p in (host.dir / "lv").rglob("*"))
    links = host.sh("ls -la /dev/here /dev/there 2>/dev/null || true")
    loops = sorted(lablvm.lab_loops(host.data))
    lvs = sorted(lv_rows(host))
    return files, links, loops, lvs


# --- the config and the volume groups --------------------------------------

def test_lvm_conf_is_private_and_valid(host):
    conf = (host.etc_lvm / "lvm.conf").read_text()
    for dev in host.pvs.values():
        assert f'"a|^{dev}$|"' in conf
    assert conf.count('"r|.*|"') == 2  # filter and global_filter
    for setting in ("activation = 0", "use_devicesfile = 0", "obtain_device_list_from_udev = 0",
                    "udev_sync = 0", "udev_rules = 0", "use_lvmpolld = 0", "monitoring = 0"):
        assert setting in conf
    for key in ("locking_dir", "backup_dir", "archive_dir", "cache_dir"):
        assert f'{key} = "{host.etc_lvm}/' in conf
    proc = host.run(["lvmconfig", "--validate"])
    assert proc.returncode == 0, proc.stderr
    assert "LVM configuration valid" in proc.stdout


def test_volume_groups_created(host):
    vgs = {r["vg_name"]: r for r in report(host, "vgs", "-o", "vg_name,pv_count,vg_size",
                                           "--units", "m")}
    assert set(vgs) == {"here", "there"}
    for row in vgs.values():
        assert row["pv_count"] == "1"
        assert float(row["vg_size"].rstrip("m")) > PV_MIB - 8
    pvs = {r["pv_name"]: r["vg_name"] for r in report(host, "pvs", "-o", "pv_name,vg_name")}
    assert pvs == {host.pvs["here"]: "here", host.pvs["there"]: "there"}
    # the PV loops are over the fixed files
    for vg, dev in host.pvs.items():
        assert (dev, str(host.dir / f"pv-{vg}.img")) in lablvm.lab_loops(host.data)


def test_pvs_all_shows_only_lab_devices(host):
    # Inside the host: the private /dev has loop0..255 (other labs' PVs among
    # them); outside: the machine's own disks. Both see only our two PVs.
    inside = {r["pv_name"] for r in report(host, "pvs", "-a", "-o", "pv_name")}
    assert inside == set(host.pvs.values())
    outside = subprocess.run(
        ["pvs", "-a", "--reportformat", "json", "-o", "pv_name"],
        env={**os.environ, "LVM_SYSTEM_DIR": str(host.etc_lvm), "LVM_SUPPRESS_FD_WARNINGS": "1"},
        capture_output=True, text=True, check=True,
    )
    names = {r["pv_name"] for r in json.loads(outside.stdout)["report"][0]["pv"]}
    assert names == set(host.pvs.values())


def test_create_volume_groups_is_idempotent(host):
    again = lablvm.create_volume_groups(host.run_checked, host.dir, PV_MIB)
    assert again == host.pvs
    assert len(lablvm.lab_loops(host.data)) == 2


# --- LVs through Salt's linux_lvm -------------------------------------------

def test_lvcreate_salt_argv_gives_block_device(host, salt_lvm):
    del salt_lvm.calls[:]
    ret = salt_lvm.lvcreate("new", "here", size="64M")
    try:
        assert salt_lvm.calls[0] == [str(SHIMS / "lvcreate"), "-n", "new", "here", "-L", "64M", "-qq"]
        assert ret["Output from lvcreate"] == 'Logical volume "new" created.'
        assert ret["/dev/here/new"]["Volume Group Name"] == "here"  # lvdisplay /dev/here/new
        dev = device_of(host, "here", "new")
        assert size_of(host, "/dev/here/new") == 64 * MIB
        data = host.dir / "lv" / "here" / "new"
        assert data.stat().st_size == 64 * MIB
        assert data.stat().st_blocks * 512 < MIB  # sparse
        assert loops_over(data) == [dev]
    finally:
        host.run(["lvremove", "-y", "here/new"], check=True)


def test_write_and_read_back(host, origin):
    digest = origin
    assert read_hash(host, "/dev/here/vm1", 5) == digest
    with open(host.dir / "lv" / "here" / "vm1", "rb") as fh:  # it is the file's data
        fh.seek(5 * MIB)
        assert hashlib.sha256(fh.read(MIB)).hexdigest() == digest


def test_lvs_json_shows_lv(host, origin):
    proc = host.run(["lvs", "--reportformat", "json", "-o", "lv_name,vg_name,lv_size"],
                    check=True)
    rows = json.loads(proc.stdout)["report"][0]["lv"]
    assert {"lv_name": "vm1", "vg_name": "here", "lv_size": "128.00m"} in rows
    assert "Activation disabled" not in proc.stderr
    row = lv_rows(host, "lv_attr", "lv_active", "origin")[("here", "vm1")]
    assert row["lv_attr"] == "-wi-a-----"
    assert row["lv_active"] == "active"
    assert row["origin"] == ""


def test_lvextend_grows_device(host, salt_lvm, origin):
    digest = origin
    dev = device_of(host, "here", "vm1")
    ret = salt_lvm.lvextend(size="+32M", lvpath="/dev/here/vm1")
    assert salt_lvm.calls[-1] == ["lvextend", "-qq", "-L", "+32M", "/dev/here/vm1"]
    assert ret == {"Output from lvextend": 'Logical volume "/dev/here/vm1" successfully extended.'}
    assert device_of(host, "here", "vm1") == dev  # same device, grown in place
    assert size_of(host, "/dev/here/vm1") == 160 * MIB
    assert (host.dir / "lv" / "here" / "vm1").stat().st_size == 160 * MIB
    assert read_hash(host, "/dev/here/vm1", 5) == digest
    # lvresize through the /dev/mapper name real LVM also accepts
    salt_lvm.lvresize(size="192M", lvpath="/dev/mapper/here-vm1")
    assert size_of(host, "/dev/here/vm1") == 192 * MIB
    assert lv_rows(host, "lv_size")[("here", "vm1")]["lv_size"] == "192.00m"


def test_snapshot_copies_and_stays_frozen(host, salt_lvm, origin):
    before = write_pattern(host, "/dev/here/vm1", 100, "before-snapshot")
    ret = salt_lvm.lvcreate("vm1-snap", "here", size="16M", snapshot="vm1")
    assert salt_lvm.calls[-2] == [str(SHIMS / "lvcreate"), "-n", "vm1-snap", "-s", "here/vm1",
                                  "-L", "16M", "-qq"]
    assert ret["Output from lvcreate"] == 'Logical volume "vm1-snap" created.'
    device_of(host, "here", "vm1-snap")
    assert size_of(host, "/dev/here/vm1-snap") == 128 * MIB  # origin's size, like LVM
    assert read_hash(host, "/dev/here/vm1-snap", 100) == before
    assert read_hash(host, "/dev/here/vm1-snap", 5) == read_hash(host, "/dev/here/vm1", 5)

    after = write_pattern(host, "/dev/here/vm1", 100, "after-snapshot")
    assert read_hash(host, "/dev/here/vm1", 100) == after
    assert read_hash(host, "/dev/here/vm1-snap", 100) == before

    rows = lv_rows(host, "lv_attr", "origin", "lv_size", "snap_percent", "lv_tags")
    snap, origin = rows[("here", "vm1-snap")], rows[("here", "vm1")]
    assert snap["origin"] == "vm1"
    assert snap["lv_attr"].startswith("swi-a-s")
    assert snap["lv_size"] == "16.00m"  # the COW size, as real lvs shows it
    assert snap["snap_percent"] == "0.00"
    assert snap["lv_tags"] == ""
    assert origin["lv_attr"].startswith("owi-a-s")
    # the metadata carries the relation as a tag (what basic lvs shows)
    basic = host.run(["lvs", "--noheadings", "-o", "lv_tags", "here/vm1-snap"], check=True)
    assert basic.stdout.strip() == "pvlab_snapshot_of=vm1"


def test_snapshot_errors_are_lvms(host, snapshot):
    before = lab_state(host)
    proc = host.run(["lvcreate", "-s", "here/nope", "-n", "s2", "-L", "16M"])
    assert proc.returncode == 5
    assert "Snapshot origin LV nope not found in Volume group here." in proc.stderr
    proc = host.run(["lvcreate", "-s", "here/vm1-snap", "-n", "s2", "-L", "16M"])
    assert proc.returncode == 5
    assert "Snapshots of snapshots are not supported." in proc.stderr
    proc = host.run(["lvcreate", "-s", "here/vm1", "-n", "vm1", "-L", "16M"])
    assert proc.returncode == 5
    assert 'Logical Volume "vm1" already exists in volume group "here"' in proc.stderr
    assert lab_state(host) == before


def test_snapshot_of_percent_origin_and_oversized_cow(host, origin):
    proc = host.run(["lvcreate", "-s", "here/vm1", "-n", "s50", "-l", "50%ORIGIN"], check=True)
    assert 'Logical volume "s50" created.' in proc.stdout
    proc = host.run(["lvcreate", "-s", "here/vm1", "-n", "sbig", "-L", "200M"], check=True)
    assert "Reducing COW size 200.00 MiB down to maximum usable size" in proc.stdout
    rows = lv_rows(host, "lv_size", "origin", "vg_free")
    assert rows[("here", "s50")]["lv_size"] == "64.00m"
    assert float(rows[("here", "sbig")]["lv_size"].rstrip("m")) < 200
    assert rows[("here", "sbig")]["origin"] == "vm1"
    for name in ("s50", "sbig"):
        assert size_of(host, f"/dev/here/{name}") == 128 * MIB
        host.run(["lvremove", "-y", f"here/{name}"], check=True)
        assert not (host.dir / "lv" / "here" / name).exists()


def test_snapshot_with_grouped_short_options(host, origin):
    """``-sn NAME`` and ``--snap`` (getopt abbreviation) are still snapshots."""
    for argv in (["lvcreate", "-sn", "s3", "-L8M", "here/vm1"],
                 ["lvcreate", "--snap", "--name=s4", "--size", "8M", "/dev/here/vm1"]):
        host.run(argv, check=True)
    rows = lv_rows(host, "origin", "lv_size")
    for name in ("s3", "s4"):
        assert rows[("here", name)] == {"vg_name": "here", "lv_name": name,
                                        "origin": "vm1", "lv_size": "8.00m"}
        assert read_hash(host, f"/dev/here/{name}", 5) == read_hash(host, "/dev/here/vm1", 5)
        host.run(["lvremove", "-y", f"here/{name}"], check=True)


def test_concurrent_commands_serialize(host):
    names = [f"par{i}" for i in range(6)]
    with ThreadPoolExecutor(len(names)) as pool:
        procs = list(pool.map(
            lambda n: host.run(["lvcreate", "-n", n, "-L", "8M", "there"]), names))
    assert [p.returncode for p in procs] == [0] * len(names), [p.stderr for p in procs]
    devices = {device_of(host, "there", n) for n in names}
    assert len(devices) == len(names)
    with ThreadPoolExecutor(len(names)) as pool:
        procs = list(pool.map(
            lambda n: host.run(["lvremove", "-y", f"there/{n}"]), names))
    assert [p.returncode for p in procs] == [0] * len(names), [p.stderr for p in procs]
    assert not any((host.dir / "lv" / "there" / n).exists() for n in names)
    assert len(lablvm.lab_loops(host.data)) == 2  # the PVs


def test_lvrename_keeps_device_and_data(host, snapshot):
    digest = read_hash(host, "/dev/here/vm1", 5)
    dev = device_of(host, "here", "vm1")
    proc = host.run(["lvrename", "here", "vm1", "vm9"], check=True)
    assert 'Renamed "vm1" to "vm9" in volume group "here"' in proc.stdout
    assert device_of(host, "here", "vm9") == dev
    assert host.run(["test", "-e", "/dev/here/vm1"]).returncode == 1
    assert not (host.dir / "lv" / "here" / "vm1").exists()
    assert read_hash(host, "/dev/here/vm9", 5) == digest
    # the snapshot follows its origin's new name
    assert lv_rows(host, "origin")[("here", "vm1-snap")]["origin"] == "vm9"
    host.run(["lvrename", "here/vm9", "here/vm1"], check=True)
    assert device_of(host, "here", "vm1") == dev
    assert lv_rows(host, "origin")[("here", "vm1-snap")]["origin"] == "vm1"


def test_lvchange_deactivates_and_activates(host, origin):
    digest = read_hash(host, "/dev/here/vm1", 5)
    data = host.dir / "lv" / "here" / "vm1"
    host.run(["lvchange", "-an", "here/vm1"], check=True)
    assert host.run(["test", "-e", "/dev/here/vm1"]).returncode == 1
    assert loops_over(data) == []
    assert data.exists()
    assert lv_rows(host, "lv_active")[("here", "vm1")]["lv_active"] == ""
    # a sync triggered by another command keeps it inactive
    host.run(["lvchange", "--refresh", "here"], check=True)
    assert host.run(["test", "-e", "/dev/here/vm1"]).returncode == 1
    host.run(["lvchange", "-ay", "here/vm1"], check=True)
    host.run(["lvchange", "-ay", "here/vm1"], check=True)  # idempotent
    device_of(host, "here", "vm1")
    assert len(loops_over(data)) == 1
    assert read_hash(host, "/dev/here/vm1", 5) == digest
    # created inactive (real LVM needs -Zn with -an): data, no device
    host.run(["lvcreate", "-an", "-Zn", "-n", "cold", "-L", "8M", "there"], check=True)
    assert (host.dir / "lv" / "there" / "cold").exists()
    assert host.run(["test", "-e", "/dev/there/cold"]).returncode == 1
    host.run(["lvchange", "-ay", "there"], check=True)
    device_of(host, "there", "cold")
    host.run(["lvremove", "-y", "there/cold"], check=True)


def test_permission_makes_device_read_only(host, origin):
    def ro():
        return host.sh("blockdev --getro /dev/here/vm1").strip()

    host.run(["lvchange", "-pr", "here/vm1"], check=True)
    assert ro() == "1"
    proc = host.run(["dd", "if=/dev/zero", "of=/dev/here/vm1", "bs=4k", "count=1",
                     "conv=notrunc,fsync", "status=none"])
    assert proc.returncode != 0
    host.run(["lvchange", "--permission", "rw", "here/vm1"], check=True)
    assert ro() == "0"
    # a read-only flag left on the loop device (it survives detach) is undone
    host.sh("blockdev --setro /dev/here/vm1")
    host.run(["lvchange", "--refresh", "here"], check=True)
    assert ro() == "0"


def test_open_lv_is_in_use(host, snapshot):
    holder = subprocess.Popen(host.argv(["sh", "-c", "exec 3</dev/here/vm1; echo open; read x"]),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        row = lv_rows(host, "lv_attr", "lv_device_open")[("here", "vm1")]
        assert row["lv_attr"] == "owi-aos---" and row["lv_device_open"] == "open"
        before = lab_state(host)
        for argv in (["lvremove", "-y", "here/vm1"], ["lvchange", "-an", "here/vm1"]):
            proc = host.run(argv)
            assert proc.returncode == 5
            assert "Logical volume here/vm1 in use." in proc.stderr
        assert lab_state(host) == before
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)


def test_lvremove_removes_device_symlink_and_file(host, salt_lvm, snapshot):
    data = host.dir / "lv" / "here" / "vm1"
    snap = host.dir / "lv" / "here" / "vm1-snap"
    out = salt_lvm.lvremove("vm1", "here")
    assert salt_lvm.calls[-1] == ["lvremove", "here/vm1", "--yes"]
    assert out == 'Logical volume "vm1" successfully removed'
    # its snapshot went with it, as with real LVM
    assert lv_rows(host) == {}
    for path in (data, snap):
        assert not path.exists()
        assert loops_over(path) == []
    assert host.run(["test", "-e", "/dev/here"]).returncode == 1
    # only the PVs' loops are left
    assert {b for _d, b in lablvm.lab_loops(host.data)} == {
        str(host.dir / "pv-here.img"), str(host.dir / "pv-there.img")}


def test_failing_real_command_leaves_nothing(host, salt_lvm):
    host.run(["lvcreate", "-n", "keep", "-L", "8M", "there"], check=True)
    before = lab_state(host)
    cases = [
        (["lvcreate", "-n", "x", "-L", "64M", "nope"], 'Volume group "nope" not found'),
        (["lvcreate", "-n", "keep", "-L", "64M", "there"],
         'Logical Volume "keep" already exists in volume group "there"'),
        (["lvcreate", "-n", "huge", "-L", "4G", "there"], "insufficient free space"),
        (["lvextend", "-L", "4G", "there/keep"], "Insufficient free space"),
        (["lvremove", "-y", "there/nope"], 'Failed to find logical volume "there/nope"'),
        (["lvrename", "there", "nope", "other"], 'Existing logical volume "nope" not found'),
    ]
    for argv, message in cases:
        proc = host.run(argv)
        assert proc.returncode == 5, (argv, proc.stderr)
        assert message in proc.stderr, (argv, proc.stderr)
        assert "Activation disabled" not in proc.stderr
        assert "pvlab" not in proc.stderr
        assert lab_state(host) == before, argv
    # through Salt: the error text is LVM's
    ret = salt_lvm.lvcreate("x", "nope", size="64M")
    assert 'Volume group "nope" not found' in ret["Output from lvcreate"]
    host.run(["lvremove", "-y", "there/keep"], check=True)


def test_shims_outside_a_lab_host_are_plain_lvm(host):
    env = {k: v for k, v in host.env.items() if k != "PVLAB_DATA"}
    proc = host.run(["lvcreate", "-n", "bare", "-L", "8M", "here"], env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Activation disabled" in proc.stderr  # exec'd real lvm, untouched
    assert host.run(["test", "-e", "/dev/here/bare"]).returncode == 1
    # the next shimmed command in the lab picks the LV up
    host.run(["lvchange", "--refresh", "here"], check=True)
    device_of(host, "here", "bare")
    host.run(["lvremove", "-y", "here/bare"], check=True)
    assert not (host.dir / "lv" / "here" / "bare").exists()


def test_killed_run_recovers(host):
    """Loops detached behind the shim's back (a killed lab) come back on re-sync."""
    host.run(["lvcreate", "-n", "vm2", "-L", "8M", "here"], check=True)
    digest = write_pattern(host, "/dev/here/vm2", 2, "vm2")
    data = host.dir / "lv" / "here" / "vm2"
    for dev in loops_over(data):
        subprocess.run(["losetup", "-d", dev], check=True)
    again = lablvm.create_volume_groups(host.run_checked, host.dir, PV_MIB)
    assert again == host.pvs
    device_of(host, "here", "vm2")
    assert read_hash(host, "/dev/here/vm2", 2) == digest
    host.run(["lvremove", "-y", "here/vm2"], check=True)


def test_teardown_leaves_no_loop_and_no_namespace(tmp_path_factory):
    """A host of its own (the module's stays up for the other tests)."""
    host = Host(tmp_path_factory.mktemp("pvlab"))
    host.pvs = lablvm.create_volume_groups(host.run_checked, host.dir, PV_MIB)
    host.run(["lvcreate", "-n", "left", "-L", "8M", "there"], check=True)
    assert len(lablvm.lab_loops(host.data)) == 3
    pid = host.holder.pid
    detached = host.teardown()
    assert len(detached) == 3
    assert lablvm.lab_loops(host.data) == []
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}")
    assert not host.data.exists()
    # no process is left in the host's mount namespace
    in_ns = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(proc / "ns" / "mnt") == host.mnt_ns:
                    in_ns.append(proc.name)
    assert in_ns == []


def test_argv_parser_finds_positionals():
    from tests.lab.lvmshim.argv import parse

    p = parse("lvcreate", ["-sn", "snap", "-L1G", "vg/lv", "--addtag", "a=b", "-qq"])
    assert p.positionals == ["vg/lv"]
    assert p.has("snapshot") and p.last("name") == "snap" and p.last("size") == "1G"
    p = parse("lvchange", ["-a", "n", "--select", "lv_name=x", "vg", "--", "-odd"])
    assert p.last("activate") == "n" and p.last("select") == "lv_name=x"
    assert p.positionals == ["vg", "-odd"]
    p = parse("lvremove", ["-Sfoo", "-yf", "--autob", "n", "vg/a", "vg/b"])
    assert p.last("select") == "foo" and p.options["autobackup"] == ["n"]
    assert p.positionals == ["vg/a", "vg/b"]
