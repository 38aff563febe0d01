"""The DRBD shim driven by the REAL drbdadm (drbd-utils 9.22 -> drbdadm-84),
in two self-made hosts (mount + UTS + net namespaces named hostA/hostB).

Self-contained: it does not use the lab fixtures. Needs root, util-linux,
iproute2 and drbd-utils; skipped otherwise.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHIMS = REPO / "tests" / "lab" / "shims"
sys.path.insert(0, str(REPO / "tests" / "lab"))
import drbdshim  # noqa: E402

from tests.lab.productdrbd import drbd as product_drbd  # noqa: E402

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare") or not os.path.exists("/usr/sbin/drbdadm"),
    reason="needs root, unshare and drbd-utils")

MIB = 1 << 20
ADDR = {"hostA": "10.78.0.11", "hostB": "10.78.0.12"}
GLOBAL = ("global { usage-count no; }\n"
          'common { handlers { split-brain "touch /var/lib/drbd/split-brain-$DRBD_RESOURCE"; } }\n')


def resfile(name, minor, port, disks, extra_net=""):
    ons = "".join(
        f"  on {h} {{\n    device /dev/drbd{minor};\n    disk {disks[h]};\n"
        f"    address {ADDR[h]}:{port};\n    meta-disk internal;\n  }}\n" for h in ("hostA", "hostB"))
    return (f"resource {name} {{\n  protocol C;\n"
            f"  net {{\n    after-sb-0pri discard-zero-changes;\n    after-sb-1pri disconnect;\n"
            f"    after-sb-2pri disconnect;\n{extra_net}  }}\n{ons}}}\n")


SETUP = r"""
set -e
hostname "$1"
mount -t tmpfs -o mode=755 pvdev /dev
for n in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0 loop-control:10:237; do
  IFS=: read name maj min <<EOF
$n
EOF
  mknod -m 666 /dev/$name c $maj $min
done
i=0; while [ $i -lt 256 ]; do mknod -m 660 /dev/loop$i b 7 $i; i=$((i+1)); done
mount -t tmpfs pvetc /etc/drbd.d
mount -t tmpfs pvvar /var/lib/drbd
ip link set lo up
echo ready
exec sleep 100000
"""


class Host:
    def __init__(self, name, tmp, env):
        self.name = name
        self.env = env
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--uts", "--net", "--propagation", "private",
             "sh", "-c", SETUP, "sh", name],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", self.proc.stderr.read()
        self.pid = self.proc.pid

    def run(self, argv, check=True, stdin=None, env=None):
        proc = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", "-u", "-n", "--", *argv],
            env={**self.env, **(env or {})}, capture_output=True, text=True, input=stdin, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"{self.name}: {argv}: rc {proc.returncode}\n"
                                 f"{proc.stdout}{proc.stderr}")
        return proc

    def write(self, path, text):
        self.run(["sh", "-c", f"cat > {path}"], stdin=text)

    def status(self):
        return status(self)

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def status(host, env=None):
    """The one-shot machine-readable query the product uses."""
    out = host.run(["drbdsetup", "events2", "--now", "all"], **({"env": env} if env else {})).stdout
    res = {}
    for line in out.splitlines():
        words = line.split()
        if len(words) < 3:
            continue
        kind = words[1]
        fields = dict(w.split(":", 1) for w in words[2:])
        r = res.setdefault(fields["name"], {})
        for k, v in fields.items():
            r[f"{kind}.{k}"] = v
    return res


# Shim calls made with this hold a running resync (the shim ends it SYNC_SECONDS after its
# start, by the clock of each call): the test reads the sync states while they last.
HOLD_SYNC = {"PVLAB_DRBD_SYNC_SECONDS": "3600"}


def summary(host, res, env=None):
    s = status(host, env).get(res, {})
    return (s.get("resource.role"), s.get("connection.role"), s.get("peer-device.replication"),
            s.get("device.disk"), s.get("peer-device.peer-disk"))


def wait_for(host, res, want, timeout=10):
    end = time.time() + timeout
    while True:
        got = summary(host, res)
        if got == want:
            return got
        if time.time() > end:
            raise AssertionError(f"{host.name} {res}: {got} != {want}")
        time.sleep(0.1)


def losetup(path):
    dev = subprocess.run(["losetup", "--find", "--show", str(path)], check=True,
                         capture_output=True, text=True).stdout.strip()
    # a read-only flag set on a loop device (the DRBD shim's Secondary) survives
    # detach and re-attach on this kernel: say read-write explicitly
    subprocess.run(["blockdev", "--setrw", dev], check=True)
    return dev


def image_loops(tmp, hosts, res, mib):
    """{host: a loop device over a fresh sparse image of ``mib`` MiB} for resource ``res``."""
    disks = {}
    for h in hosts:
        img = tmp / f"{h}-{res}.img"
        with open(img, "wb") as fh:
            fh.truncate(mib * MIB)
        disks[h] = losetup(img)
    return disks


def cleanup_loops(tmp):
    for name in os.listdir("/sys/block"):
        if not name.startswith("loop"):
            continue
        try:
            backing = Path(f"/sys/block/{name}/loop/backing_file").read_text().strip()
        except OSError:
            continue
        if backing.startswith(str(tmp)):
            subprocess.run(["losetup", "-d", f"/dev/{name}"], check=False)


@pytest.fixture(scope="module")
def pair():
    tmp = Path(tempfile.mkdtemp(prefix="pvdrbd-"))
    data = tmp / "pvlab"
    env = {"PATH": f"{SHIMS}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "PVLAB_DATA": str(data), "PVLAB_DRBD_SYNC_SECONDS": "0.5", "LC_ALL": "C"}
    os.environ["PVLAB_DATA"] = str(data)
    hosts = {}
    try:
        for h in ("hostA", "hostB"):
            hosts[h] = Host(h, tmp, env)
        a, b = hosts["hostA"], hosts["hostB"]
        subprocess.run(["ip", "link", "add", "pvdrbdA", "type", "veth", "peer", "name", "pvdrbdB",
                        "netns", str(b.pid)], check=True)
        subprocess.run(["ip", "link", "set", "pvdrbdA", "netns", str(a.pid)], check=True)
        for h, dev in ((a, "pvdrbdA"), (b, "pvdrbdB")):
            h.run(["ip", "link", "set", dev, "name", "eth1"])
            h.run(["ip", "addr", "add", f"{ADDR[h.name]}/24", "dev", "eth1"])
            h.run(["ip", "link", "set", "eth1", "up"])
            h.write("/etc/drbd.d/global_common.conf", GLOBAL)
        disks = image_loops(tmp, hosts, "r0", 64)
        yield {"hosts": hosts, "disks": disks, "tmp": tmp, "data": data}
    finally:
        for h in hosts.values():
            h.run(["drbdadm", "down", "all"], check=False)
        for h in hosts.values():
            h.stop()
        cleanup_loops(tmp)
        os.environ.pop("PVLAB_DATA", None)
        shutil.rmtree(tmp, ignore_errors=True)


def md5(host, dev, length):
    out = host.run(["sh", "-c", f"head -c {length} {dev} | md5sum"]).stdout
    return out.split()[0]


def test_resource_file_accepted_by_real_drbdadm(pair, tmp_path):
    text = "global { usage-count no; }\n" + resfile("r0", 0, 7788, pair["disks"])
    path = tmp_path / "r0.conf"
    path.write_text(text)
    for h in ("hostA", "hostB"):
        env = {**pair["hosts"][h].env, "__DRBD_NODE__": h}
        dump = subprocess.run(["drbdadm", "-c", str(path), "dump", "r0"], env=env,
                              capture_output=True, text=True, check=False)
        assert dump.returncode == 0, dump.stderr
        assert "after-sb-0pri" in dump.stdout
        dry = pair["hosts"][h].run(["drbdadm", "-c", str(path), "-d", "up", "r0"],
                                   check=False)
        assert dry.returncode == 0, dry.stderr
        assert "drbdsetup-84 new-resource r0" in dry.stdout
        assert f"drbdsetup-84 connect r0 ipv4:{ADDR[h]}:7788" in dry.stdout
    broken = tmp_path / "bad.conf"
    broken.write_text(text.replace("protocol C;", "protocol C"))
    bad = subprocess.run(["drbdadm", "-c", str(broken), "dump", "r0"],
                         env={**pair["hosts"]["hostA"].env, "__DRBD_NODE__": "hostA"},
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 10


def test_scenario(pair):
    hosts, disks = pair["hosts"], pair["disks"]
    a, b = hosts["hostA"], hosts["hostB"]
    for h in (a, b):
        h.write("/etc/drbd.d/r0.res", resfile("r0", 0, 7788, disks))
        h.run(["drbdadm", "create-md", "--force", "r0"])
        gi = h.run(["drbdmeta", "0", "v08", disks[h.name], "internal", "get-gi"]).stdout
        assert gi.startswith("0000000000000004:")
    # up on A only: waiting for the peer
    a.run(["drbdadm", "up", "r0"])
    assert summary(a, "r0") == ("Secondary", "Unknown", "Off", "Inconsistent", "DUnknown")
    assert "connection:Connecting" in a.run(["drbdsetup", "events2", "--now", "r0"]).stdout
    b.run(["drbdadm", "up", "r0"])
    for h in (a, b):
        assert summary(h, "r0") == ("Secondary", "Secondary", "Established",
                                    "Inconsistent", "Inconsistent")
    # the data area is what 8.4 gives for internal meta data on 64 MiB
    size = int(a.run(["blockdev", "--getsize64", "/dev/drbd0"]).stdout)
    assert size == (131072 - 80) * 512
    # primary without --force on Inconsistent data fails as 8.4 does
    p = a.run(["drbdadm", "primary", "r0"], check=False)
    assert p.returncode != 0
    assert "0: State change failed: (-2) Need access to UpToDate data" in p.stderr
    assert "Command 'drbdsetup-84 primary 0' terminated with exit code 17" in p.stderr
    # initial full sync
    a.run(["drbdadm", "primary", "--force", "r0"], env=HOLD_SYNC)
    assert summary(a, "r0", HOLD_SYNC) == ("Primary", "Secondary", "SyncSource", "UpToDate", "Inconsistent")
    assert summary(b, "r0", HOLD_SYNC) == ("Secondary", "Primary", "SyncTarget", "Inconsistent", "UpToDate")
    assert "replication:SyncSource" in a.run(["drbdadm", "status", "r0"], env=HOLD_SYNC).stdout
    wait_for(a, "r0", ("Primary", "Secondary", "Established", "UpToDate", "UpToDate"))
    wait_for(b, "r0", ("Secondary", "Primary", "Established", "UpToDate", "UpToDate"))
    # adjust on an up-to-date resource changes nothing
    dry = a.run(["drbdadm", "-d", "adjust", "r0"]).stdout
    assert "drbdsetup" not in dry, dry
    # same bytes on both, through a failover
    a.run(["sh", "-c", "head -c 3145728 /dev/urandom > /tmp/pattern-$$; "
                       "dd if=/tmp/pattern-$$ of=/dev/drbd0 bs=1M oflag=direct status=none; "
                       "rm /tmp/pattern-$$"])
    want = md5(a, "/dev/drbd0", 3 * MIB)
    refused = b.run(["drbdadm", "primary", "r0"], check=False)
    assert "0: State change failed: (-1) Multiple primaries not allowed by config" in refused.stderr
    assert "terminated with exit code 11" in refused.stderr
    # a Secondary refuses writes (set_disk_ro)
    assert b.run(["dd", "if=/dev/zero", "of=/dev/drbd0", "bs=4k", "count=1", "status=none"],
                 check=False).returncode != 0
    # demote refused while the device is held open
    opener = subprocess.Popen(["nsenter", "-t", str(a.pid), "-m", "--", "sh", "-c",
                               "exec 3</dev/drbd0; echo open; exec sleep 30"],
                              stdout=subprocess.PIPE, text=True)
    assert opener.stdout.readline().strip() == "open"
    held = a.run(["drbdadm", "secondary", "r0"], check=False)
    opener.kill()
    opener.wait()
    assert "0: State change failed: (-12) Device is held open by someone" in held.stderr
    a.run(["drbdadm", "secondary", "r0"])
    b.run(["drbdadm", "primary", "r0"])
    assert md5(b, "/dev/drbd0", 3 * MIB) == want
    b.run(["drbdadm", "secondary", "r0"])
    a.run(["drbdadm", "primary", "r0"])

    # cut the link: both see WFConnection; both write as Primary
    drbdshim.cut_link("r0")
    wait_for(a, "r0", ("Primary", "Unknown", "Off", "UpToDate", "DUnknown"))
    wait_for(b, "r0", ("Secondary", "Unknown", "Off", "UpToDate", "DUnknown"))
    for h in (a, b):  # (replication is Off while not connected, as drbdsetup-84 says on 8.4)
        assert status(h)["r0"]["connection.connection"] == "Connecting"
    assert md5(b, "/dev/drbd0", 3 * MIB) == want
    b.run(["drbdadm", "primary", "r0"])
    a.run(["sh", "-c", "printf AAAA | dd of=/dev/drbd0 bs=4k conv=sync oflag=direct status=none"])
    b.run(["sh", "-c", "printf BBBB | dd of=/dev/drbd0 bs=4k conv=sync oflag=direct status=none"])
    a_data = md5(a, "/dev/drbd0", 3 * MIB)
    assert md5(b, "/dev/drbd0", 3 * MIB) != a_data
    drbdshim.restore_link("r0")
    # split brain: both StandAlone
    for h in (a, b):
        wait_for(h, "r0", ("Primary", "Unknown", "Off", "UpToDate", "DUnknown"))
    events = a.run(["drbdsetup", "events2", "--now", "all"]).stdout
    assert "connection:StandAlone" in events
    # the shim ran the kernel's helper (drbdadm split-brain minor-0) on both hosts
    for h in (a, b):
        assert h.run(["test", "-e", "/var/lib/drbd/split-brain-r0"], check=False).returncode == 0
    parsed = product_drbd._parse_events(events, {"r0"})["r0"]  # the product's parser, on shim output
    assert parsed["split_brain"] is True and parsed["role"] == "Primary" and parsed["minor"] == 0
    assert product_drbd._parse_events(events)["r0"]["split_brain"] is False  # StandAlone alone is not
    gone = a.run(["drbdadm", "disconnect", "r0"], check=False)
    assert "??: Failure: (162) Invalid configuration request" in gone.stderr
    assert "unknown connection" in gone.stderr
    # B is the victim: discard-my-data needs Secondary (8.4 text on failure)
    refused = b.run(["drbdadm", "connect", "--discard-my-data", "r0"], check=False)
    assert "r0: Failure: (123) --discard-my-data not allowed when primary." in refused.stderr
    b.run(["drbdadm", "secondary", "r0"])
    b.run(["drbdadm", "connect", "--discard-my-data", "r0"])
    a.run(["drbdadm", "connect", "r0"])
    wait_for(a, "r0", ("Primary", "Secondary", "Established", "UpToDate", "UpToDate"))
    wait_for(b, "r0", ("Secondary", "Primary", "Established", "UpToDate", "UpToDate"))
    a.run(["drbdadm", "secondary", "r0"])
    b.run(["drbdadm", "primary", "r0"])
    assert md5(b, "/dev/drbd0", 3 * MIB) == a_data
    b.run(["drbdadm", "secondary", "r0"])
    a.run(["drbdadm", "primary", "r0"])

    # resize after growing both backing devices
    for h in ("hostA", "hostB"):
        with open(pair["tmp"] / f"{h}-r0.img", "r+b") as fh:
            fh.truncate(96 * MIB)
        subprocess.run(["losetup", "-c", disks[h]], check=True)
    a.run(["drbdadm", "resize", "r0"])
    for h in (a, b):
        wait_for(h, "r0", summary(h, "r0")[:2] + ("Established", "UpToDate", "UpToDate"))
        got = int(h.run(["blockdev", "--getsize64", "/dev/drbd0"]).stdout)
        assert got == (196608 - 80) * 512
    for h in (a, b):
        dump = h.run(["drbdmeta", "--force", "0", "v08", disks[h.name], "internal", "dump-md"],
                     check=False)
        assert f"la-size-sect {196608 - 80};" in dump.stdout, dump.stdout + dump.stderr
    a.run(["drbdadm", "secondary", "r0"])
    for h in (a, b):
        h.run(["drbdadm", "down", "r0"])
        assert "r0" not in h.status()
        assert h.run(["test", "-e", "/dev/drbd0"], check=False).returncode != 0
    assert drbdshim.resource_state("r0") is None


# --- the backing LV under DRBD, on the lab pair (LVM shim + DRBD shim) ------------


@pytest.fixture(scope="module")
def lab_pair():
    """hostA and hostB of the namespace lab (no libvirt): LVM shims on loop
    devices, replication link eth1, the lab lock held."""
    from tests.lab import lab as labmod
    from tests.lab import namespaces

    lab = labmod.Lab(("hostA", "hostB"), pv_size_mib=256)
    keepers = []
    try:
        lab.up(libvirt=False)
        # The DRBD shim reaches a host's /dev through a process living in its
        # mount namespace (libvirtd, in the full lab): keep one in each.
        keepers = [subprocess.Popen(h.argv(["sleep", "3600"])) for h in lab.hosts.values()]
        yield lab.hosts
    finally:
        for h in lab.hosts.values():
            if namespaces.netns_path(h.name).exists():
                h.run(["drbdadm", "down", "all"], check=False)
        for keeper in keepers:
            keeper.kill()
            keeper.wait()
        lab.down()


def test_snapshot_of_backing_lv_on_secondary_is_live_replica(lab_pair):
    """Real DRBD writes every replicated block into the Secondary's backing LV,
    so a snapshot of that LV (how backups read a disc) holds the Primary's data."""
    a, b = lab_pair["hostA"], lab_pair["hostB"]
    disks = {"hostA": "/dev/here/r1", "hostB": "/dev/there/r1"}
    for h, vg in ((a, "here"), (b, "there")):
        h.run(["mkdir", "-p", "/run/lock"])  # drbdmeta's lock files (/var/lock)
        h.run(["sh", "-c", "cat > /etc/drbd.d/global_common.conf"], input=GLOBAL)
        h.run(["sh", "-c", "cat > /etc/drbd.d/r1.res"], input=resfile("r1", 1, 7790, disks))
        h.run(["lvcreate", "-n", "r1", "-L", "64M", vg])
        h.run(["drbdadm", "create-md", "--force", "r1"])
        h.run(["drbdadm", "up", "r1"])
    a.run(["drbdadm", "primary", "--force", "r1"])
    wait_for(a, "r1", ("Primary", "Secondary", "Established", "UpToDate", "UpToDate"))
    a.run(["sh", "-c", "head -c 3145728 /dev/urandom > /tmp/pattern-$$; "
                       "dd if=/tmp/pattern-$$ of=/dev/drbd1 bs=1M oflag=direct status=none; "
                       "rm /tmp/pattern-$$"])
    want = md5(a, "/dev/drbd1", 3 * MIB)
    assert md5(b, "/dev/drbd1", 3 * MIB) == want  # the replica is live on B
    b.run(["lvcreate", "-s", "-L", "64M", "-n", "r1-snap", "there/r1"])
    assert md5(b, "/dev/there/r1-snap", 3 * MIB) == want
    # a later write reaches the next snapshot too (not a copy of the last split)
    a.run(["sh", "-c", "printf LATER | dd of=/dev/drbd1 bs=4k conv=sync oflag=direct status=none"])
    want2 = md5(a, "/dev/drbd1", 3 * MIB)
    b.run(["lvcreate", "-s", "-L", "64M", "-n", "r1-snap2", "there/r1"])
    assert md5(b, "/dev/there/r1-snap2", 3 * MIB) == want2 != want
    # and the primary's own snapshot is its own data, as before
    a.run(["lvcreate", "-s", "-L", "64M", "-n", "r1-snap", "here/r1"])
    assert md5(a, "/dev/here/r1-snap", 3 * MIB) == want2
    a.run(["drbdadm", "secondary", "r1"])
    for h, vg in ((a, "here"), (b, "there")):
        h.run(["drbdadm", "down", "r1"])
        h.run(["lvremove", "-y", f"{vg}/r1"])


def test_peers_connect_only_with_the_same_secret_and_show_tells_the_product(pair):
    """cram-hmac-alg with different secrets (or one side without): no connection; the same
    secret, taken by ``drbdadm adjust``: Connected. ``drbd.peer_auth`` reads it from show."""
    hosts = pair["hosts"]
    a, b = hosts["hostA"], hosts["hostB"]
    disks = image_loops(pair["tmp"], hosts, "r9", 16)

    def secret(value):
        return f"    cram-hmac-alg sha1;\n    shared-secret \"{value}\";\n" if value else ""

    a.write("/etc/drbd.d/r9.res", resfile("r9", 9, 7799, disks, secret("one-secret")))
    b.write("/etc/drbd.d/r9.res", resfile("r9", 9, 7799, disks, secret("another")))
    for h in (a, b):
        h.run(["drbdadm", "create-md", "--force", "r9"])
        h.run(["drbdadm", "up", "r9"])
    time.sleep(0.5)
    for h in (a, b):
        assert "connection:Connecting" in h.run(["drbdsetup", "events2", "--now", "r9"]).stdout
    b.write("/etc/drbd.d/r9.res", resfile("r9", 9, 7799, disks))  # no authentication at all
    b.run(["drbdadm", "adjust", "r9"])
    time.sleep(0.5)
    assert "connection:Connecting" in a.run(["drbdsetup", "events2", "--now", "r9"]).stdout
    assert product_drbd.drbdconf.peer_auth(b.run(["drbdsetup", "show", "all"]).stdout)["r9"] is False
    b.write("/etc/drbd.d/r9.res", resfile("r9", 9, 7799, disks, secret("one-secret")))
    b.run(["drbdadm", "adjust", "r9"])
    wait_for(a, "r9", ("Secondary", "Secondary", "Established", "Inconsistent", "Inconsistent"))
    shown = a.run(["drbdsetup", "show", "all"]).stdout
    assert 'shared-secret' in shown and product_drbd.drbdconf.peer_auth(shown)["r9"] is True
    for h in (a, b):
        h.run(["drbdadm", "down", "r9"])
