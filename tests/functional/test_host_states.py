"""``state.apply pairvm.host`` for real, on one host made of namespaces of this test's own.

Self-contained: a module fixture starts a holder process in new mount, UTS and
network namespaces (hostname hostA) where temporary directories are bound
over /etc/network, /etc/drbd.d, /etc/libvirt and /etc/lvm, with a private
/run and sysfs, and veth pairs eth0/eth1/pub0. The other paths the states
write (machines dir, host command, completion, root's .ssh) are pillar
settings pointed into the temporary tree (/root itself holds this machine's
Python). LVM there sees only this test's loop devices (a private lvm.conf,
``activation = 0``: no device-mapper here). ``salt-call --local`` runs inside
with the formula's file tree and module dirs, and pillar from a temporary
pillar root. Part tests share one host; the whole state runs on a second,
pristine one. Nothing of the machine's own /etc, network or disks is touched;
the holders, the loop devices and the temporary trees are gone at the end
(after a killed run, the next run detaches the loops the killed one left).

Needs root, util-linux (unshare, nsenter, losetup), lvm2, e2fsprogs,
ifupdown, bridge-utils, drbd-utils, openssh (ssh-keygen, ssh, sshd).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pairvmlib import defaults, render
from tests.lab import lvm as lablvm
from tests.lab import namespaces, saltlab
from tests.unit.conftest import REPO
from tests.unit.utils.test_network import LAB, LAB_TEXT, SEED, SEED_TEXT

HOST = "hostA"
PAIR = {"hostA": {"admin_ip": "10.77.0.11", "replication_ip": "10.78.0.11"},
        "hostB": {"admin_ip": "10.77.0.12", "replication_ip": "10.78.0.12"}}
DRBD_OPTIONS = {"resync_rate": "100M", "c_plan_ahead": 0, "connect_int": 2, "shared_secret": "Zm9v+bar/baz="}
LOOPS = ("a", "b", "c", "d", "e")
LOOP_MIB = 64
BOUND = ("/etc/network", "/etc/drbd.d", "/etc/libvirt", "/etc/lvm", "/machines")
TOOLS = ("unshare", "nsenter", "losetup", "lvm", "mkfs.ext4", "blkid", "wipefs", "ifup", "brctl", "drbdadm",
         "ssh-keygen")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, loop devices)"),
    pytest.mark.skipif(not all(shutil.which(t) for t in TOOLS), reason=f"needs {', '.join(TOOLS)}"),
    pytest.mark.skipif(not all(os.path.isdir(p) for p in BOUND[:-1]),
                       reason=f"needs the mount points {BOUND}"),
]

SETUP = r"""
set -e
hostname "$1"
mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=0755 pvhost-run /run
mount --bind "$2/etc-network" /etc/network
mount --bind "$2/etc-drbd.d" /etc/drbd.d
mount --bind "$2/etc-libvirt" /etc/libvirt
mount --bind "$2/etc-lvm" /etc/lvm
mount --bind "$2/machines" /machines
ip link set lo up
for link in eth0 eth1 pub0; do
    ip link add "$link" type veth peer name "$link-peer"
    ip link set "$link-peer" up
done
echo ready
exec cat >/dev/null
"""




class Host:
    """hostA: the namespaces, its private trees, its loop devices, salt-call inside."""

    def __init__(self, base: Path):
        self.base = base
        self.run_dir = base / "salt"
        for sub in ("etc-drbd.d", "etc-lvm", "machines", "sbin", "completion", "keys", "images",
                    "pillar", "srv", "lvm-state"):
            (base / sub).mkdir()
        shutil.copytree("/etc/network", base / "etc-network", symlinks=True)
        (base / "etc-network" / "interfaces.d").mkdir(exist_ok=True)
        for old in (base / "etc-network" / "interfaces.d").iterdir():
            old.unlink()
        (base / "etc-network" / "interfaces").write_text(
            "source /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n")
        shutil.copytree("/etc/libvirt", base / "etc-libvirt", symlinks=True)
        (base / "etc-libvirt" / "qemu" / "autostart").mkdir(parents=True, exist_ok=True)
        self.loops = {name: self._loop(name) for name in LOOPS}
        lablvm.write_lvm_conf(base / "etc-lvm", self.loops.values(), run_dir=base / "lvm-state")
        (base / "srv" / "pairvm").symlink_to(REPO / "salt" / "pairvm")
        (base / "pillar" / "top.sls").write_text("base:\n  '*':\n    - pairvm\n")
        self.conf = base / "conf"
        self.conf.mkdir()
        (self.conf / "minion").write_text(yaml.safe_dump({
            "id": HOST, "file_client": "local", "file_roots": {"base": [str(base / "srv")]},
            "pillar_roots": {"base": [str(base / "pillar")]}, "root_dir": str(self.run_dir),
            "module_dirs": [str(REPO / "_modules")], "states_dirs": [str(REPO / "_states")],
            "utils_dirs": [str(REPO / "_utils")], "log_level_logfile": "info", **saltlab.GRAINS,
        }))
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--uts", "--net", "--propagation", "private",
             "sh", "-c", SETUP, "setup", HOST, str(base)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.holder.stdout.readline()
        if line.strip() != "ready":
            self.holder.kill()
            raise RuntimeError(f"namespace setup failed: {line}{self.holder.stderr.read()}")
        lablvm.record_holder(base, self.holder.pid)
        self.env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "HOME": str(base), "LANG": "C.UTF-8", "DRBD_DRIVER_VERSION_OVERRIDE": "8.4.11"}

    def _loop(self, name):
        image = self.base / "images" / f"{name}.img"
        with open(image, "wb") as fh:
            fh.truncate(LOOP_MIB * 1024 * 1024)
        dev = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True, text=True,
                             check=True).stdout.strip()
        subprocess.run(["blockdev", "--setrw", dev], check=True)  # a loop keeps --setro across reuse
        return dev

    def image(self, name):
        return self.base / "images" / f"{name}.img"

    def run(self, argv, check=True, input=None, timeout=120):
        proc = subprocess.run(
            ["nsenter", "-t", str(self.holder.pid), "--mount", "--uts", "--net",
             "env", "-i", *[f"{k}={v}" for k, v in self.env.items()], *map(str, argv)],
            capture_output=True, text=True, input=input, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"{argv}: rc {proc.returncode}\n{proc.stdout}{proc.stderr}")
        return proc

    def popen(self, argv):
        return subprocess.Popen(
            ["nsenter", "-t", str(self.holder.pid), "--mount", "--uts", "--net",
             "env", "-i", *[f"{k}={v}" for k, v in self.env.items()], *map(str, argv)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def pillar(self, pairvm):
        (self.base / "pillar" / "pairvm.sls").write_text(yaml.safe_dump({"pairvm": pairvm}))

    def salt(self, function, *args, check=True):
        proc = self.run([REPO / ".venv/bin/salt-call", "-c", self.conf, "--local", "--out=json",
                         "--retcode-passthrough", "--log-level=quiet", function, *args], check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"salt-call {function} {args}: rc {proc.returncode}\n"
                                 f"{proc.stdout}{proc.stderr}")
        return json.loads(proc.stdout)["local"] if proc.stdout.strip() else proc.stderr

    def apply(self, sls, test=False):
        """``state.apply`` -> ``{state id: {result, changes, comment, ...}}``."""
        proc = self.run([REPO / ".venv/bin/salt-call", "-c", self.conf, "--local", "--out=json",
                         "--log-level=quiet", "state.apply", sls, *(["test=True"] if test else [])],
                        check=False)
        data = json.loads(proc.stdout)["local"]
        assert isinstance(data, dict), f"state.apply {sls} did not run: {data}\n{proc.stderr}"
        return {ret["__id__"]: ret for ret in data.values()}

    def teardown(self):
        namespaces.end_holder(self.holder)
        lablvm.detach_lab_loops(self.base)
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="module", autouse=True)
def machines_mount_point():
    """/machines to bind the hosts' own over (the lab's mount points are made the same way)."""
    made = not os.path.isdir("/machines")
    if made:
        os.mkdir("/machines")
    yield
    if made:
        os.rmdir("/machines")


@pytest.fixture(scope="module")
def host(tmp_path_factory, machines_mount_point):
    lablvm.reap_killed_runs(tmp_path_factory.getbasetemp(), "pvhost")
    made = Host(tmp_path_factory.mktemp("pvhost"))
    try:
        yield made
    finally:
        made.teardown()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, host):
    """A second host, untouched by the part tests: the whole state from scratch."""
    made = Host(tmp_path_factory.mktemp("pvhost"))
    try:
        yield made
    finally:
        made.teardown()


def pillar(host, **extra):
    """The lab-like pillar of these tests; ``extra`` merges into pairvm:host."""
    base = host.base
    pairvm = {
        "pair": PAIR, "bridge": "br0", "vms": {"web1": {"home": "hostA", "memory": 128, "disc": "64M"}},
        "cli": {"path": str(base / "sbin" / "pairvm")},
        "metrics": {"textfile": str(base / "metrics" / "pairvm.prom")},
        "volume_groups": ["here", "there", "spare"],
        "host": {"manage_packages": False, "libvirt": {"manage_service": False},
                 "completion": {"path": str(base / "completion" / "pairvm")},
                 "boot": {"unit": str(base / "systemd" / "pairvm-autostart.service")},
                 "network": {"apply": False}},
    }
    for key, value in extra.items():
        pairvm["host"][key] = value
    return pairvm


def changed(results):
    return {sid: ret["changes"] for sid, ret in results.items() if ret["changes"]}


def failed(results):
    return {sid: ret["comment"] for sid, ret in results.items() if ret["result"] is False}


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def vg_of(host):
    out = host.run(["pvs", "--reportformat", "json", "-o", "pv_name,vg_name"]).stdout
    return {row["pv_name"]: row["vg_name"] for part in json.loads(out)["report"] for row in part["pv"]}


# --- rendering --------------------------------------------------------------------

def test_show_sls_has_every_part_with_template_formula_ids(host):
    network = dict(SEED, apply=True, admin=dict(SEED["admin"], gateway="10.77.0.1"))
    host.pillar(pillar(host, network=network, volume_groups={"here": [host.loops["a"]]}))
    sls = host.salt("state.show_sls", "pairvm.host")
    assert isinstance(sls, dict), sls
    parts_re = "packages|network|storage|drbd|libvirt|ssh|config|metrics|watch|boot"
    ids = rf"pairvm-(host-({parts_re})|config)-[a-z0-9-]+"
    assert all(re.fullmatch(ids, sid) for sid in sls), sorted(sls)
    parts = {sls[sid]["__sls__"] for sid in sls}
    assert parts == {f"pairvm.host.{p}" for p in ("packages", "network", "storage", "drbd", "libvirt", "ssh",
                                                  "config", "metrics", "watch", "boot")} | {"pairvm.config"}
    contents = next(arg["contents"] for arg in sls["pairvm-host-network-interfaces"]["file"]
                    if isinstance(arg, dict) and "contents" in arg)
    assert "address 10.77.0.11/24" in contents and "vlan-raw-device eth0" in contents
    assert "pairvm-host-packages-not-managed" in sls and "pairvm-host-libvirt-service" not in sls


def test_a_bare_host_renders_its_first_highstate_without_the_libvirt_binding(host, tmp_path):
    """The highstate installs the binding: rendering it must not need the pairvm module."""
    blocked = tmp_path / "no-libvirt"
    blocked.mkdir()
    (blocked / "libvirt.py").write_text('raise ImportError("blocked: a bare host has no binding yet")\n')
    host.pillar(pillar(host, volume_groups={"here": [host.loops["a"]]}))
    host.env["PYTHONPATH"] = str(blocked)
    try:
        # the positive control: the pairvm module really is unavailable here
        assert host.salt("sys.list_functions", "pairvm") == []
        sls = host.salt("state.show_sls", "pairvm")
        assert isinstance(sls, dict), sls
        wanted = {"pairvm-config-global-file", "pairvm-host-drbd-global-common", "pairvm-config-cli"}
        assert wanted <= set(sls)
    finally:
        del host.env["PYTHONPATH"]
    assert "pairvm.create" in host.salt("sys.list_functions", "pairvm")


def test_pillar_text_with_quotes_renders_as_data_not_yaml(host):
    """A ``"`` or ``: `` in pillar text reaches the states as text (yaml_dquote), never as YAML."""
    bad_vg, bad_minion = 'x"y: z', 'h"st: x'
    pairvm = pillar(host, volume_groups={bad_vg: [host.loops["a"]]})
    host.pillar(pairvm)
    sls = host.salt("state.show_sls", "pairvm.host.storage")
    assert isinstance(sls, dict), sls
    (invalid,) = [sid for sid in sls if sid.endswith("-invalid")]
    name = next(arg["name"] for arg in sls[invalid]["test"] if isinstance(arg, dict) and "name" in arg)
    assert name.startswith(f"pillar pairvm:host:volume_groups:{bad_vg} is not one of")
    host.pillar(dict(pairvm, pair={bad_minion: PAIR["hostA"], "hostB": PAIR["hostB"]}))
    sls = host.salt("state.show_sls", "pairvm.config")
    assert isinstance(sls, dict), sls
    name = next(arg["name"] for arg in sls["pairvm-config-host-in-pair"]["test"]
                if isinstance(arg, dict) and "name" in arg)
    assert name == f"minion hostA is not one of pillar pairvm:pair ({bad_minion}, hostB)"


def test_packages_put_the_libvirt_binding_into_a_salt_python_of_its_own(host, tmp_path):
    """Salt's onedir packages and a Salt in a virtualenv do not see Debian's python3-libvirt
    (saltstack/salt#64291): the state pip-installs the binding into that interpreter.

    A fresh virtualenv without system site-packages stands for it (the lab's Salt runs in
    one too). Offline: pip takes the wheel scripts/bootstrap built from the pinned sdist."""
    venv = tmp_path / "salt-python"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import libvirt; print(libvirt.getVersion())"]
    assert subprocess.run(probe, capture_output=True, check=False).returncode != 0  # not there yet
    pairvm = pillar(host)
    installed = ["lvm2", "drbd-utils", "libvirt-dev", "pkg-config", "gcc"]  # already here: apt stays idle
    pairvm["host"].update(manage_packages=True, packages=installed, salt_python=str(python))
    host.pillar(pairvm)
    host.env.update(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(REPO / ".cache" / "wheels"))
    try:
        dry = host.apply("pairvm.host.packages", test=True)
        assert dry["pairvm-host-packages-libvirt-python"]["result"] is None, dry
        first = host.apply("pairvm.host.packages")
        second = host.apply("pairvm.host.packages")
    finally:
        for key in ("PIP_NO_INDEX", "PIP_FIND_LINKS"):
            del host.env[key]
    assert failed(first) == {}, failed(first)
    assert first["pairvm-host-packages-libvirt-python"]["changes"] == {"libvirt-python==12.8.0": "Installed"}
    assert subprocess.run(probe, capture_output=True, check=False).returncode == 0
    assert changed(second) == {}


def test_packages_of_a_salt_on_debians_python_need_no_pip(host):
    pairvm = pillar(host)
    pairvm["host"].update(manage_packages=True, packages=["lvm2"], salt_python="/usr/bin/python3")
    host.pillar(pairvm)
    sls = host.salt("state.show_sls", "pairvm.host.packages")
    assert set(sls) == {"pairvm-host-packages-installed"}
    assert "python3-libvirt" in defaults.HOST["packages"]


def test_packages_test_mode_lists_what_apt_would_install_and_installs_nothing(host):
    pairvm = pillar(host)
    pairvm["host"]["manage_packages"] = True
    host.pillar(pairvm)
    ret = host.apply("pairvm.host.packages", test=True)["pairvm-host-packages-installed"]
    assert ret["result"] in (True, None), ret["comment"]
    missing = set(ret["changes"])
    assert missing <= set(defaults.HOST["packages"])
    if missing:
        assert ret["comment"].startswith("The following packages would be installed/updated:")
        listed = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Status}\n", *sorted(missing)],
                                capture_output=True, text=True, check=False).stdout
        assert "install ok installed" not in listed  # test mode installed nothing


# --- network ----------------------------------------------------------------------

def test_network_seed_with_vlan_is_checked_and_written_but_not_applied(host):
    network = dict(SEED, apply=False, admin=dict(SEED["admin"], gateway="10.77.0.1"))
    host.pillar(pillar(host, network=network))
    results = host.apply("pairvm.host.network")
    assert failed(results) == {}
    assert set(changed(results)) == {"pairvm-host-network-interfaces"}
    written = (host.base / "etc-network" / "interfaces.d" / "pairvm").read_text()
    assert written == SEED_TEXT.replace("192.0.2.11", "10.77.0.11").replace("198.51.100.11", "10.78.0.11") \
        .replace("gateway 192.0.2.1", "gateway 10.77.0.1")
    assert "pairvm-host-network-up" not in results
    assert host.run(["ifquery", "--state"], check=False).stdout == ""  # nothing brought up


def test_network_lab_is_brought_up_in_the_namespace_and_second_apply_changes_nothing(host):
    host.pillar(pillar(host, network=dict(LAB, apply=True)))
    assert host.apply("pairvm.host.network", test=True)["pairvm-host-network-up"]["result"] in (None, True)
    first = host.apply("pairvm.host.network")
    assert failed(first) == {}
    assert first["pairvm-host-network-up"]["changes"] == {"ifup": ["eth0", "eth1", "br0"]}
    assert (host.base / "etc-network" / "interfaces.d" / "pairvm").read_text() == LAB_TEXT
    addresses = {i["ifname"]: [f"{a['local']}/{a['prefixlen']}" for a in i["addr_info"]
                               if a["family"] == "inet"]
                 for i in json.loads(host.run(["ip", "-j", "addr"]).stdout)}
    assert addresses["eth0"] == ["10.77.0.11/24"] and addresses["eth1"] == ["10.78.0.11/24"]
    assert "master br0" in host.run(["ip", "-o", "link", "show", "pub0"]).stdout
    second = host.apply("pairvm.host.network")
    assert failed(second) == {} and changed(second) == {}


def test_network_text_ifupdown_rejects_leaves_the_old_file(host):
    sls = (REPO / "salt/pairvm/host/network.sls").read_text()
    check_cmd = re.search(r"- check_cmd: (.+)", sls)[1]
    path = "/etc/network/interfaces.d/pairvm"
    before = (host.base / "etc-network" / "interfaces.d" / "pairvm").read_text()
    ret = host.salt("state.single", "file.managed", f"name={path}",
                    "contents=address 10.77.0.99/24", f"check_cmd={check_cmd}", check=False)
    (ret,) = ret.values()
    assert ret["result"] is False
    assert re.search(r"/tmp/\S+:1: misplaced option", ret["comment"]), ret["comment"]
    assert (host.base / "etc-network" / "interfaces.d" / "pairvm").read_text() == before


# --- storage ----------------------------------------------------------------------

def test_storage_blank_devices_become_volume_groups_once(host):
    loops = host.loops
    # Per-host devices through pairvm:host:hosts:<minion id> (merged over pairvm:host).
    host.pillar(pillar(host, hosts={HOST: {"volume_groups": {"here": [loops["a"]], "there": [loops["b"]]}}}))
    dry = host.apply("pairvm.host.storage", test=True)
    assert failed(dry) == {}
    assert dry["pairvm-host-storage-here-vg"]["result"] is None
    assert dry["pairvm-host-storage-there-vg"]["comment"] == "Volume Group there is set to be created"
    assert vg_of(host) == {}
    first = host.apply("pairvm.host.storage")
    assert failed(first) == {}
    assert {sid for sid in changed(first)} == {
        f"pairvm-host-storage-{vg}-{what}" for vg, dev in (("here", "a"), ("there", "b"))
        for what in ("vg", f"pv-{loops[dev].removeprefix('/dev/')}")}
    assert vg_of(host) == {loops["a"]: "here", loops["b"]: "there"}
    second = host.apply("pairvm.host.storage")
    assert failed(second) == {} and changed(second) == {}
    assert second["pairvm-host-storage-here-devices-usable"]["comment"] == \
        f"{loops['a']} is a physical volume of here"


def test_storage_refuses_an_ext4_device_and_its_data_stays_intact(host):
    dev, mnt = host.loops["c"], host.base / "mnt"
    mnt.mkdir()
    host.run(["mkfs.ext4", "-q", "-F", dev])
    host.run(["mount", "-t", "ext4", dev, mnt])
    host.run(["sh", "-c", f"echo precious > {mnt}/data && sync"])
    host.run(["umount", mnt])
    before = sha256(host.image("c"))
    host.pillar(pillar(host, volume_groups={"spare": [dev]}))
    for test in (True, False):
        results = host.apply("pairvm.host.storage", test=test)
        guard = results["pairvm-host-storage-spare-devices-usable"]
        assert guard["result"] is False
        assert f"Refusing to use {dev} for volume group spare; nothing was changed." in guard["comment"]
        assert f"{dev} holds data: ext4 filesystem (signature at offset 0x438)" in guard["comment"]
        assert results["pairvm-host-storage-spare-vg"]["result"] is False
        assert "requisite failed" in results["pairvm-host-storage-spare-vg"]["comment"]
        assert changed(results) == {}
    assert sha256(host.image("c")) == before
    assert host.run(["blkid", "-p", "-o", "value", "-s", "TYPE", dev]).stdout.strip() == "ext4"
    host.run(["mount", "-t", "ext4", "-o", "ro", dev, mnt])
    try:
        assert host.run(["cat", f"{mnt}/data"]).stdout == "precious\n"
    finally:
        host.run(["umount", mnt])
    assert dev not in vg_of(host)


def test_storage_refuses_a_partition_table_and_a_pv_of_another_vg(host):
    table, foreign = host.loops["d"], host.loops["e"]
    mbr = bytearray(512)
    mbr[446:462] = struct.pack("<B3sB3sII", 0, b"\x00\x02\x00", 0x83, b"\x00\x00\x00", 2048, 4096)
    mbr[510:512] = b"\x55\xaa"
    with open(host.image("d"), "r+b") as fh:
        fh.write(mbr)
    host.run(["pvcreate", "-qq", foreign])
    host.run(["vgcreate", "-qq", "other", foreign])
    before = {name: sha256(host.image(name)) for name in ("d", "e")}
    host.pillar(pillar(host, volume_groups={"spare": [table, foreign]}))
    results = host.apply("pairvm.host.storage")
    comment = results["pairvm-host-storage-spare-devices-usable"]["comment"]
    assert f"{table} holds data: dos partition table (signature at offset 0x1fe)" in comment
    assert f"{foreign} holds data: a physical volume of volume group other" in comment
    assert changed(results) == {}
    assert {name: sha256(host.image(name)) for name in ("d", "e")} == before
    assert vg_of(host)[foreign] == "other"


def test_storage_pillar_mistakes_fail_before_touching_anything(host):
    host.pillar(pillar(host, volume_groups={"data": [host.loops["c"]], "here": [host.loops["a"]],
                                            "there": [host.loops["a"]]}))
    results = host.apply("pairvm.host.storage")
    assert "is not one of pairvm:volume_groups (here, there, spare)" in \
        results["pairvm-host-storage-data-invalid"]["name"]
    assert f"lists {host.loops['a']}, which is also listed for here" in \
        results["pairvm-host-storage-there-invalid"]["name"]
    assert changed(results) == {}


# --- the whole host state ---------------------------------------------------------

@pytest.fixture(scope="module")
def peer_keys(pristine):
    """hostB's root key pair and host key pair, made here (as if published by hostB)."""
    keys = {}
    for name in ("hostB-user", "hostB-host", "hostA-host"):
        path = pristine.base / "keys" / name
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)],
                       check=True)
        keys[name] = path
    return keys


def full_pillar(host, peer_keys, with_peer=True):
    user = (host.base / "keys" / "hostB-user.pub").read_text().strip()
    hostkey = (host.base / "keys" / "hostB-host.pub").read_text().strip()
    ssh = host.base / "ssh"  # root's .ssh (the lab keeps /root/.ssh too: pillar paths)
    pairvm = pillar(host, network=dict(LAB, apply=True),
                    volume_groups={"here": [host.loops["a"]], "there": [host.loops["b"]]},
                    ssh={"key_file": str(ssh / "id_ed25519"),
                         "authorized_keys": str(ssh / "authorized_keys"),
                         "known_hosts": str(ssh / "known_hosts"),
                         "host_key": f"{peer_keys['hostA-host']}.pub",
                         "peer_keys": {"hostB": {"user_key": user, "host_key": hostkey}} if with_peer
                         else {}})
    pairvm["drbd_options"] = DRBD_OPTIONS
    return pairvm


def test_full_host_state_converges_and_a_second_apply_changes_nothing(pristine, peer_keys):
    autostart = pristine.base / "etc-libvirt" / "qemu" / "autostart"
    (autostart / "web1.xml").symlink_to("/etc/libvirt/qemu/web1.xml")
    (autostart / "cli-made.xml").symlink_to("/etc/libvirt/qemu/cli-made.xml")
    (autostart / "not-pairvm.xml").symlink_to("/etc/libvirt/qemu/not-pairvm.xml")
    (pristine.base / "machines" / "cli-made").write_text("name: cli-made\n")
    (pristine.base / "etc-drbd.d" / "old-vm.res").write_text("# a resource written before the secret\n")
    (pristine.base / "etc-drbd.d" / "old-vm.res").chmod(0o644)
    qemu_conf = pristine.base / "etc-libvirt" / "qemu.conf"
    pristine.pillar(full_pillar(pristine, peer_keys))

    dry = pristine.apply("pairvm.host", test=True)
    assert failed(dry) == {}, failed(dry)
    for sid in ("pairvm-host-network-interfaces", "pairvm-host-network-up", "pairvm-host-storage-here-vg",
                "pairvm-host-drbd-global-common", "pairvm-host-libvirt-vnc-listen",
                "pairvm-host-libvirt-no-autostart", "pairvm-host-ssh-keypair", "pairvm-host-ssh-publish",
                "pairvm-host-config-bash-completion"):
        assert dry[sid]["result"] is None, (sid, dry[sid])
    assert not (pristine.base / "etc-drbd.d" / "global_common.conf").exists()
    assert (autostart / "web1.xml").is_symlink() and not (pristine.base / "ssh").exists()

    first = pristine.apply("pairvm.host")
    assert failed(first) == {}, failed(first)
    assert "pairvm-host-ssh-peer-pending" not in first
    # DRBD: the very text of pairvm.drbd_common_config, root-only with the secret, and the old .res too.
    common = pristine.base / "etc-drbd.d" / "global_common.conf"
    assert common.read_text() == render.drbd_global_common(DRBD_OPTIONS)
    assert common.read_text() == pristine.salt("pairvm.drbd_common_config")
    assert stat.S_IMODE(common.stat().st_mode) == 0o600
    assert stat.S_IMODE((pristine.base / "etc-drbd.d" / "old-vm.res").stat().st_mode) == 0o600
    # libvirt: one active vnc_listen on loopback; pairvm VMs' autostart links gone, others kept.
    assert re.findall(r"^\s*vnc_listen\s*=.*$", qemu_conf.read_text(), re.M) == ['vnc_listen = "127.0.0.1"']
    assert sorted(p.name for p in autostart.iterdir()) == ["not-pairvm.xml"]
    assert sorted(first["pairvm-host-libvirt-no-autostart"]["changes"]["removed"]) == [
        "/etc/libvirt/qemu/autostart/cli-made.xml", "/etc/libvirt/qemu/autostart/web1.xml"]
    # SSH: own key pair, the peer's key from its admin address only, its host key known.
    ssh_dir = pristine.base / "ssh"
    assert stat.S_IMODE(ssh_dir.stat().st_mode) == 0o700
    assert (ssh_dir / "id_ed25519.pub").read_text().split()[2] == "root@hostA"
    peer_user = (pristine.base / "keys" / "hostB-user.pub").read_text().split()
    lines = (ssh_dir / "authorized_keys").read_text().splitlines()
    assert lines[1] == (f'from="10.77.0.12",no-agent-forwarding,no-port-forwarding,no-X11-forwarding '
                        f"{peer_user[0]} {peer_user[1]} hostB-user")
    assert stat.S_IMODE((ssh_dir / "authorized_keys").stat().st_mode) == 0o600
    found = pristine.run(["ssh-keygen", "-F", "10.77.0.12", "-f", ssh_dir / "known_hosts"]).stdout
    assert (pristine.base / "keys" / "hostB-host.pub").read_text().split()[1] in found
    published = pristine.salt("mine.get", HOST, "pairvm_ssh")[HOST]
    own_host_key = (pristine.base / "keys" / "hostA-host.pub").read_text().split()[:2]
    assert published == {"user_key": (ssh_dir / "id_ed25519.pub").read_text().strip(),
                         "host_key": " ".join(own_host_key)}
    # The host command, /machines/_global and the completion.
    assert os.access(pristine.base / "sbin" / "pairvm", os.X_OK)
    view = json.loads((pristine.base / "machines" / "_global").read_text())
    assert (view["peer"], view["bridge"]) == ("hostB", "br0")
    assert view["volume_groups"] == ["here", "there", "spare"]
    assert view["backup"]["key"] == "/root/.ssh/pairvm_backup"
    launcher = (pristine.base / "sbin" / "pairvm").read_text()
    assert f'sys.exit(hostcmd.main(sys.argv[1:], salt_config_dir="{pristine.conf}"))' in launcher
    assert f'sys.path.insert(0, "{pristine.run_dir}/var/cache/salt/minion/extmods/utils")' in launcher
    completion = (pristine.base / "completion" / "pairvm").read_text()
    assert 'local commands="help list check_system first_time_setup create' in completion
    # The boot unit runs the host command's autostart, is enabled, and systemd accepts it.
    unit = pristine.base / "systemd" / "pairvm-autostart.service"
    assert f"\nExecStart={pristine.base / 'sbin' / 'pairvm'} autostart\n" in unit.read_text()
    assert (pristine.base / "systemd" / "multi-user.target.wants" / unit.name).resolve() == unit
    verified = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                              check=False)
    assert verified.returncode == 0 and "pairvm-autostart" not in verified.stderr, verified.stderr
    # The metrics schedule (masterless: written offline into the minion's schedule).
    assert first["pairvm-host-metrics-schedule"]["result"] is True, first["pairvm-host-metrics-schedule"]

    second = pristine.apply("pairvm.host")
    assert failed(second) == {} and changed(second) == {}, changed(second)
    assert second["pairvm-host-ssh-publish"]["comment"] == "mine entry pairvm_ssh is up to date"


def test_ssh_trust_works_with_a_real_sshd_from_the_peer_address_only(pristine, peer_keys):
    """sshd plays hostB's host key on both admin addresses of this namespace.

    The peer's root key (authorized_keys written by the state) gets in from
    10.77.0.12 and not from 10.77.0.11; this host's known_hosts (written by
    the state) accepts hostB's host key on 10.77.0.12 and nothing else.
    """
    if not (shutil.which("sshd") and shutil.which("ssh")):
        pytest.skip("needs openssh-server and openssh-client")
    ssh_dir = pristine.base / "ssh"
    pristine.pillar(full_pillar(pristine, peer_keys))
    assert failed(pristine.apply("pairvm.host.ssh")) == {}  # nothing to do after the full test
    pristine.run(["ip", "addr", "replace", "10.77.0.11/24", "dev", "eth0"])
    pristine.run(["ip", "addr", "replace", "10.77.0.12/24", "dev", "eth0-peer"])
    pristine.run(["ip", "addr", "add", "10.77.0.99/24", "dev", "eth0-peer"], check=False)
    config = pristine.base / "sshd_config"
    config.write_text(
        f"Port 22\nListenAddress 10.77.0.11\nListenAddress 10.77.0.12\n"
        f"HostKey {peer_keys['hostB-host']}\nAuthorizedKeysFile {ssh_dir / 'authorized_keys'}\n"
        # StrictModes would refuse the file under /tmp (world-writable): the test tree's path.
        "PidFile none\nUsePAM no\nStrictModes no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n")
    pristine.run(["mkdir", "-p", "-m", "0755", "/run/sshd"])
    sshd = pristine.popen(["/usr/sbin/sshd", "-D", "-e", "-f", config])
    try:
        deadline = time.monotonic() + 10
        while pristine.run(["sh", "-c", "ss -ltn | grep -q '10.77.0.12:22 '"], check=False).returncode:
            assert time.monotonic() < deadline and sshd.poll() is None, "sshd did not start"
            time.sleep(0.1)

        def ssh(source, target):
            return pristine.run(["ssh", "-F", "/dev/null", "-i", peer_keys["hostB-user"], "-b", source,
                             "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                             "-o", f"UserKnownHostsFile={ssh_dir / 'known_hosts'}",
                             "-o", "GlobalKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5",
                             f"root@{target}", "echo", "trusted"], check=False, timeout=30)

        good = ssh("10.77.0.12", "10.77.0.12")
        assert good.returncode == 0 and good.stdout == "trusted\n", good.stderr
        wrong_source = ssh("10.77.0.99", "10.77.0.12")
        assert wrong_source.returncode == 255 and "Permission denied" in wrong_source.stderr
        unknown_host = ssh("10.77.0.12", "10.77.0.11")
        assert unknown_host.returncode == 255 and "Host key verification failed" in unknown_host.stderr
    finally:
        sshd.terminate()
        sshd.wait(timeout=10)


def test_ssh_without_the_peer_keys_says_a_second_apply_completes_the_trust(pristine, peer_keys):
    pristine.pillar(full_pillar(pristine, peer_keys, with_peer=False))
    results = pristine.apply("pairvm.host.ssh")
    assert failed(results) == {}
    note = results["pairvm-host-ssh-peer-pending"]
    assert note["result"] is True
    assert "hostB has not published its keys (mine entry pairvm_ssh) yet" in note["comment"]
    assert "pairvm-host-ssh-authorize-peer" not in results
