"""The old tool's documented session, typed into hostA's ``pairvm`` command (issue 12).

The documentation of the tool pairvm replaces shows an operator on a host doing::

    pairvm first_time_setup
    pairvm help
    pairvm help create
    pairvm create myvm here 1024 10G
    pairvm cdrom myvm RebeccaBlackLinux.iso
    pairvm image myvm squeeze password123
    pairvm list
    pairvm start myvm
    pairvm stop myvm
    pairvm serial myvm
    pairvm backup myvm user@backuphost:/backup/myvm.gz 1024
    pairvm backup all user@backuphost:/backup/_NAME.gz 1024

Every command is typed with these names, argument order and forms, with one
change: the disc is ``20M``, not ``10G``, because a backup at the documented
1024 KiB/s reads the whole disc (10G: about 3 hours) and the lab's volume
groups hold 1 GiB; 20M holds the 18 MiB OS image. ``start``/``stop`` and
``cdrom myvm eject`` are typed in between to see the VM boot from the CD
(blank disc), then from the image.

Real pieces: the master and both minions, the peer runner interface (create,
cdrom, chkconfig run on the master through ``publish.runner``), libvirt and
QEMU booting through SeaBIOS (no direct kernel boot: the CD is an ISOLINUX
image of the test guest, the OS image a SYSLINUX disc of it,
``tests/guest/media.py``), an HTTP mirror on hostA's loopback laid out like
cloud.debian.org (image plus ``SHA512SUMS``) for the ``squeeze`` entry, and an
sshd on hostB's admin address for the backup host ``backuphost`` (hostA's
``/root/.ssh/config`` names it), chrooted so that ``/backup`` is a directory
of hostB's private tree. The lab shims stand in for DRBD and LVM activation
(tests/lab/README.md).
"""

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.guest import media
from tests.integration.test_vm_lifecycle import MARKER, NOTHING, footprint, serial_log, wait_for
from tests.lab import instance, saltlab, sshd
from tests.lab.hosts import GUEST, REPO

VM = "myvm"
DISC = "20M"  # the documented 10G: see the module's docstring
ISO = "RebeccaBlackLinux.iso"
ISO_DIR = "/var/lib/pairvm/iso"  # on both hosts; the operator types `cdrom` from here on hostA
MIRROR_DIR = "/var/lib/pairvm/test-mirror"  # hostA, served on its loopback
MIRROR_PORT = 8712
BACKUP_USER = "user"
BACKUP_PORT = 2223
BACKUP_CHROOT = "/var/lib/pairvm/test-backuphost"  # hostB: the sshd's ChrootDirectory
BACKUP_KEY = "/root/.ssh/session_backup"
BACKUP_KNOWN = "/root/.ssh/session_known_hosts"
SSHD_DIR = Path("/var/tmp") / instance.name("pvsession-sshd")  # this lab instance's
PASSWORD = "password123"
SQUEEZE = "squeeze/latest/debian-6-generic-amd64.raw"
TAMPERED = "wheezy/latest/debian-7-generic-amd64.raw"  # changed after SHA512SUMS listed it
UNLISTED = "jessie/latest/debian-8-generic-amd64.raw"  # its SHA512SUMS does not list it


# --- the lab around the session -----------------------------------------------------------------


@pytest.fixture(scope="module")
def images(lab, tmp_path_factory):
    """The CD on both hosts; the mirror on hostA with squeeze, a tampered and an unlisted image,
    and images at the paths of the default catalogue (trixie, noble), served on loopback."""
    work = tmp_path_factory.mktemp("media")
    cd = media.cd_iso(work / ISO, GUEST)
    disc = media.disc_image(work / "disc.raw", GUEST)
    qcow2 = work / "disc.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(disc), str(qcow2)], check=True)
    for host in lab.hosts.values():
        (host.root / ISO_DIR.lstrip("/")).mkdir(parents=True, exist_ok=True)
        shutil.copy(cd, host.root / ISO_DIR.lstrip("/") / ISO)
    mirror = lab.hosts["hostA"].root / MIRROR_DIR.lstrip("/")
    files = {f"debian/{SQUEEZE}": disc, f"debian/{TAMPERED}": disc, f"debian/{UNLISTED}": disc,
             "debian/trixie/latest/debian-13-generic-amd64.qcow2": qcow2,
             "ubuntu/noble/current/noble-server-cloudimg-amd64.img": qcow2}
    for path, source in files.items():
        (mirror / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, mirror / path)
    with open(mirror / "debian" / TAMPERED, "r+b") as fh:  # bytes of its own: the image cache is
        fh.seek(8192)                                       # by digest, and squeeze's is cached
        fh.write(b"WHEEZY")
    for path in files:  # each directory's checksum file, as the distributions publish it
        directory = (mirror / path).parent
        listed = [p for p in sorted(directory.iterdir()) if p.name not in ("SHA512SUMS", "SHA256SUMS")
                  and not path.startswith(f"debian/{UNLISTED.split('/')[0]}")]
        if path.startswith("ubuntu/"):
            text = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()} *{p.name}\n" for p in listed)
            (directory / "SHA256SUMS").write_text(text)
        else:
            text = "".join(f"{hashlib.sha512(p.read_bytes()).hexdigest()}  {p.name}\n" for p in listed)
            (directory / "SHA512SUMS").write_text(text + f"{'0' * 128}  debian-x-generic-amd64.json\n")
    with open(mirror / "debian" / TAMPERED, "r+b") as fh:  # after its digest was published
        fh.seek(4096)
        fh.write(b"TAMPERED")
    host = lab.hosts["hostA"]
    server = subprocess.Popen(host.argv(["python3", "-m", "http.server", "--bind", "127.0.0.1", "--directory",
                                         MIRROR_DIR, str(MIRROR_PORT)]),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: host.run(["python3", "-c", "import urllib.request as u; u.urlopen("
                                   f"'http://127.0.0.1:{MIRROR_PORT}/debian/{SQUEEZE}', timeout=2)"],
                                  check=False).returncode == 0, "the image mirror", timeout=20)
        yield {"disc": disc.read_bytes(), "qcow2": qcow2.read_bytes()}
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(mirror, ignore_errors=True)
        for host in lab.hosts.values():
            shutil.rmtree(host.root / ISO_DIR.lstrip("/"), ignore_errors=True)


@pytest.fixture(scope="module")
def backuphost(lab):
    """``user@backuphost``: an sshd on hostB's admin address, port 2223, for user ``user``,
    chrooted into a busybox tree where ``/backup`` is; hostA's ssh knows it as backuphost."""
    created = subprocess.run(["id", BACKUP_USER], capture_output=True, check=False).returncode != 0
    if created:
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/backup",
                        "--shell", "/bin/sh",
                        "--password", "*", BACKUP_USER], check=True)
    entry = subprocess.run(["getent", "passwd", BACKUP_USER], capture_output=True, text=True,
                           check=True).stdout.strip().split(":")
    home, shell = entry[5], entry[6]
    hostb = lab.hosts["hostB"]
    chroot = hostb.root / BACKUP_CHROOT.lstrip("/")
    for directory in ("bin", "dev", "backup", home.lstrip("/")):
        (chroot / directory).mkdir(parents=True, exist_ok=True)
    shutil.copy("/bin/busybox", chroot / "bin" / "busybox")
    for applet in ("sh", "cat", "tee", "mv", "rm", "mkdir", "wc", "od", "sha256sum", Path(shell).name):
        link = chroot / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")
    if shell != "/bin/" + Path(shell).name:
        (chroot / shell.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (chroot / shell.lstrip("/")).symlink_to("/bin/busybox")
    hostb.run(["mknod", "-m", "666", f"{BACKUP_CHROOT}/dev/null", "c", "1", "3"], check=False)
    subprocess.run(["chown", f"{BACKUP_USER}:", str(chroot / "backup")], check=True)
    conf = sshd.prepare(SSHD_DIR, BACKUP_PORT, (BACKUP_USER,), listen="10.77.0.12",
                        extra=(f"ChrootDirectory {BACKUP_CHROOT}",))
    hosta = lab.hosts["hostA"]
    hosta.run(["install", "-D", "-m", "0600", str(SSHD_DIR / "client"), BACKUP_KEY])
    hosta.run(["tee", BACKUP_KNOWN],
              input=sshd.known_hosts(SSHD_DIR, BACKUP_PORT, "backuphost", "10.77.0.12"))
    hosta.run(["tee", "/root/.ssh/config"], input="Host backuphost\n    HostName 10.77.0.12\n")
    daemon = None
    try:
        daemon = sshd.start(hostb, conf, SSHD_DIR / "sshd.log", "10.77.0.12", BACKUP_PORT)
        yield chroot / "backup"
    finally:
        if daemon:
            sshd.stop(daemon)
        hosta.run(["rm", "-f", "/root/.ssh/config", BACKUP_KEY, BACKUP_KNOWN], check=False)
        shutil.rmtree(chroot, ignore_errors=True)
        shutil.rmtree(SSHD_DIR, ignore_errors=True)
        if created:
            subprocess.run(["userdel", BACKUP_USER], capture_output=True, check=False)


@pytest.fixture(scope="module")
def session_pillar(salt_master, salt_cli, images, backuphost):
    """The catalogue (squeeze and the tampered and unlisted images on the mirror, the defaults
    pointed at it) and the backup settings of the lab; the host command installed on both hosts."""
    path = Path(salt_master.config["pillar_roots"]["base"][0]) / "test_vms.sls"
    mirror = f"http://127.0.0.1:{MIRROR_PORT}"
    entries = {name: {"mirror": "debian", "path": path_, "format": "raw", "checksums": "SHA512SUMS"}
               for name, path_ in (("squeeze", SQUEEZE), ("wheezy", TAMPERED), ("jessie", UNLISTED))}
    path.write_text(yaml.safe_dump({"pairvm": {
        "image_mirrors": {"debian": f"{mirror}/debian", "ubuntu": f"{mirror}/ubuntu"},
        "images": entries,
        "backup": {"port": BACKUP_PORT, "key": BACKUP_KEY, "known_hosts": BACKUP_KNOWN},
    }}))
    assert salt_cli.run("saltutil.refresh_pillar", "wait=True", minion_tgt="*").returncode == 0
    assert salt_cli.run("state.apply", "pairvm.config", minion_tgt="*").returncode == 0
    yield
    path.write_text("{}\n")
    salt_cli.run("saltutil.refresh_pillar", "wait=True", minion_tgt="*")


@pytest.fixture(scope="module")
def session(lab, session_pillar, salt_run_cli):
    """The VM the session creates, destroyed afterwards on both hosts whatever happened."""
    yield VM
    salt_run_cli.run("pairvm.destroy", VM, "confirm=True", "force=True")


def pairvm(lab, *args, cwd="/root", host="hostA", timeout=300):
    """``pairvm ARGS`` typed on a lab host, in the directory ``cwd``."""
    return lab.hosts[host].run(["env", "-C", cwd, "pairvm", *args], check=False, timeout=timeout)


def typed(lab, *args, **kwargs):
    """``pairvm ARGS``, which must succeed."""
    done = pairvm(lab, *args, **kwargs)
    assert done.returncode == 0, f"pairvm {' '.join(args)}: rc {done.returncode}\n{done.stdout}{done.stderr}"
    return done.stdout


def last_boot(lab, name=VM):
    """The kernel command line of the guest's last boot (it prints it after its marker)."""
    log = serial_log(lab.hosts["hostA"], name)
    tail = log.rsplit(MARKER, 1)[1] if MARKER in log else ""
    return next((line for line in tail.splitlines() if line.startswith("cmdline:")), "")


def boot(lab, *start_args):
    """``pairvm start myvm``, then the kernel command line of the boot it caused."""
    before = serial_log(lab.hosts["hostA"], VM).count(MARKER)
    typed(lab, "start", VM, *start_args)
    return wait_for(lambda: serial_log(lab.hosts["hostA"], VM).count(MARKER) > before and last_boot(lab),
                    f"{VM} to boot", timeout=120)


def record(lab, host):
    return lab.hosts[host].run(["cat", f"/machines/{VM}"]).stdout


def disc(lab, host, size):
    minor = yaml.safe_load(record(lab, host))["drbd_minor"]
    out = lab.hosts[host].run(["sh", "-c", f"head -c {size} /dev/drbd{minor} | sha256sum"]).stdout
    return out.split()[0]


def seed_exists(lab):
    seed = f"/var/lib/pairvm/seeds/{VM}.iso"
    return lab.hosts["hostA"].run(["test", "-e", seed], check=False).returncode == 0


# --- the session ---------------------------------------------------------------------------------


def test_the_documented_session_on_a_host(session, lab, salt_cli, images, backuphost):
    setup = typed(lab, "first_time_setup")
    assert "all checks passed: this host is ready for pairvm." in setup
    summaries = [line.strip() for line in typed(lab, "help").split("not yet available")[0].splitlines()
                 if line.startswith("      ")]
    assert summaries and all(text.endswith(".") for text in summaries), summaries  # whole sentences
    create_help = typed(lab, "help", "create")
    assert "usage: pairvm create NAME here|there MEMORY DISC [--ip IP] [--vcpus N]" in create_help

    started = time.monotonic()
    created = typed(lab, "create", VM, "here", "1024", DISC)
    print(f"\npairvm create through the master: {time.monotonic() - started:.1f} s")
    vm = yaml.safe_load(record(lab, "hostA"))
    assert (vm["home"], vm["memory"], vm["disc_mib"]) == ("hostA", 1024, 20)
    assert f"IP {vm['ip']}" in created and f"VNC display {vm['vnc_display']}" in created
    assert footprint(lab, VM)["hostB"]["lvs"] == [f"there/{VM}"]

    # create -> insert a CD -> start: the blank disc falls through to the CD.
    typed(lab, "cdrom", VM, ISO, cwd=ISO_DIR)
    iso = f"{ISO_DIR}/{ISO}"
    assert record(lab, "hostA") == record(lab, "hostB")
    assert yaml.safe_load(record(lab, "hostB"))["cdrom"] == iso
    assert typed(lab, "cdrom", VM) == f"{VM}: cdrom {iso} (at its next start)\n"
    assert "pairvm.boot=cd" in boot(lab)
    typed(lab, "stop", VM)

    typed(lab, "image", VM, "squeeze", PASSWORD)
    size = len(images["disc"])
    want = hashlib.sha256(images["disc"]).hexdigest()
    assert [disc(lab, h, size) for h in ("hostA", "hostB")] == [want, want]
    rows = typed(lab, "list").splitlines()
    assert rows[1].split()[:4] == [VM, "1024", "20", "no"]
    # The image boots from the disc; its seed (the CD now) names the guest after the VM.
    assert "pairvm.boot=disc" in boot(lab)
    wait_for(lambda: f"seed-hostname: {VM}" in serial_log(lab.hosts["hostA"], VM).rsplit(MARKER, 1)[1],
             "the seed's host name")
    typed(lab, "stop", VM)
    typed(lab, "cdrom", VM, "eject")
    assert not seed_exists(lab) and yaml.safe_load(record(lab, "hostB"))["cdrom"] is None
    assert "pairvm.boot=disc" in boot(lab)

    console = lab.hosts["hostA"].run(
        ["sh", "-c", "(sleep 3; printf 'hello pairvm\\r'; sleep 2; printf '\\035') "
                     "| script -qfec 'pairvm serial myvm' /dev/null"], check=False, timeout=60)
    assert console.returncode == 0, console.stdout + console.stderr
    assert "Connected to myvm's serial console" in console.stdout and "echo: hello pairvm" in console.stdout
    typed(lab, "stop", VM)

    for args in (("backup", VM, "user@backuphost:/backup/myvm.gz", "1024"),
                 ("backup", "all", "user@backuphost:/backup/_NAME.gz", "1024")):
        before = time.monotonic()
        out = typed(lab, *args)
        took = time.monotonic() - before
        stored = backuphost / "myvm.gz"
        assert stored.exists() and (backuphost / "myvm.gz.sha256").exists(), out
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == \
            (backuphost / "myvm.gz.sha256").read_text().split()[0]
        restored = subprocess.run(["gzip", "-dc", str(stored)], capture_output=True, check=True).stdout
        assert len(restored) >= size and restored[:size] == images["disc"]
        assert hashlib.sha256(restored).hexdigest() == disc(lab, "hostA", len(restored))
        assert took > len(restored) / 2**20 * 0.9, took  # the documented 1024 KiB/s limit held
        print(f"pairvm {' '.join(args)}: {took:.1f} s for {len(restored)} bytes")
    assert "is intact" in typed(lab, "verify_backup", "user@backuphost:/backup/myvm.gz", VM)


def test_the_record_a_host_set_is_what_the_next_state_apply_writes(session, lab, salt_cli):
    typed(lab, "cdrom", VM, ISO, cwd=ISO_DIR)
    typed(lab, "start", VM)  # its state is running: stopped, verify would report EVMNOTRUNNING
    try:
        for host, result in salt_cli.run("pairvm.create", VM, "test=True", minion_tgt="*").data.items():
            assert result["changes"] == [], (host, result)
        same = typed(lab, "chkconfig", VM)
        assert "ERROR" not in same and " 0 errors, " in f" {same}", same
        machines = lab.hosts["hostB"].root / "machines" / VM
        original = machines.read_text()
        edited = original.replace('"memory": 1024', '"memory": 2048')
        assert edited != original, original
        machines.write_text(edited)
        try:
            differs = pairvm(lab, "chkconfig", VM)
        finally:
            machines.write_text(original)
        assert differs.returncode == 1
        assert f"ERROR EMACHINESDIFF {VM}: /machines/{VM} differs" in differs.stdout
    finally:
        typed(lab, "stop", VM)
        typed(lab, "cdrom", VM, "eject")


@pytest.mark.parametrize("dist, why", [
    ("wheezy", "sha512 of the download is"),
    ("jessie", f"SHA512SUMS does not list {UNLISTED.rsplit('/', 1)[1]}: nothing was written"),
    ("sarge", "unknown image 'sarge'; known images: bookworm, jammy, jessie, noble, squeeze, trixie, wheezy"),
])
def test_a_tampered_or_unlisted_image_is_refused_and_nothing_is_written(session, lab, images, dist, why):
    size = len(images["disc"])
    before = [disc(lab, h, size) for h in ("hostA", "hostB")]
    cache = lab.hosts["hostA"].root / "var/cache/pairvm/images"
    cached = sorted(os.listdir(cache)) if cache.exists() else []
    seeded = seed_exists(lab)
    refused = pairvm(lab, "image", VM, dist, PASSWORD)
    assert refused.returncode == 1 and why in refused.stderr, refused.stderr
    assert [disc(lab, h, size) for h in ("hostA", "hostB")] == before
    assert (sorted(os.listdir(cache)) if cache.exists() else []) == cached and seed_exists(lab) == seeded


@pytest.mark.parametrize("dist, checksums, algorithm", [
    ("trixie", "debian/trixie/latest/SHA512SUMS", "sha512"),
    ("noble", "ubuntu/noble/current/SHA256SUMS", "sha256"),
])
def test_the_default_catalogue_finds_its_images_and_checksum_files_on_a_mirror(
        session, lab, salt_cli, images, dist, checksums, algorithm):
    """The defaults' own paths, below a mirror laid out like the distributions' (test=True:
    the checksum file is read, nothing is downloaded)."""
    planned = salt_cli.run("pairvm.image", VM, dist, "password=$6$x$" + "y" * 86, "test=True",
                           minion_tgt="hostA")
    assert planned.returncode == 0, planned
    digest = getattr(hashlib, algorithm)(images["qcow2"]).hexdigest()
    steps = planned.data["changes"]
    assert steps[0].startswith(f"download http://127.0.0.1:{MIRROR_PORT}/{checksums.split('/')[0]}/")
    assert steps[1].startswith(f"{algorithm}sum ") and f"(expect {digest})" in steps[1]


@pytest.mark.parametrize("args", [("stop", "nosuch"), ("start", "nosuch"), ("serial", "nosuch"),
                                  ("cdrom", "nosuch"), ("image", "nosuch", "squeeze", PASSWORD),
                                  ("destroy", "nosuch", "--yes-really")])
def test_a_vm_that_does_not_exist_is_named_and_nothing_else(session, lab, args):
    done = pairvm(lab, *args)
    assert (done.returncode, done.stdout, done.stderr) == (1, "", "pairvm: no VM nosuch on this host\n")


# --- the peer runner ACL, through the real master ------------------------------------------------


def extra_minion(salt_master, tmp_path, minion_id):
    """A minion id of its own (keys, cache) that calls the master with salt-call from the
    control namespace: no daemon, no host. Its key is accepted on first contact (auto_accept)."""
    root = tmp_path / minion_id
    root.mkdir()
    (root / "minion").write_text(yaml.safe_dump({
        "id": minion_id, "master": salt_master.config["interface"],
        "master_port": salt_master.config["ret_port"], "root_dir": str(root), "pki_dir": str(root / "pki"),
        "cachedir": str(root / "cache"), "sock_dir": str(root / "sock"), "log_file": str(root / "log"),
    }))

    def publish(function, *args):
        argv = [str(REPO / ".venv/bin/salt-call"), f"--config-dir={root}", "--out=json", "--log-level=quiet",
                "publish.runner", function, f"arg={json.dumps(list(args))}"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        return json.loads(done.stdout)["local"] if done.stdout.strip() else done.stderr

    return publish


@pytest.fixture
def strangers(salt_master, tmp_path):
    """``hostC`` (a host of a second pair, ``saltlab.OTHER_PAIR_PILLAR``, in ``second_pair.sls``
    meanwhile: in the ACL, its pillar its own pair) and ``hostA2`` (not listed; its id starts like
    hostA's); their keys are deleted and the second pair's pillar emptied afterwards."""
    second = Path(salt_master.config["pillar_roots"]["base"][0]) / "second_pair.sls"
    second.write_text(saltlab.OTHER_PAIR_PILLAR)
    try:
        yield {mid: extra_minion(salt_master, tmp_path, mid) for mid in ("hostC", "hostA2")}
    finally:
        for mid in ("hostC", "hostA2"):
            salt_master.salt_key_cli().run("-d", mid, "-y")
        second.write_text("{}\n")


def registry(salt_master):
    path = Path(salt_master.config["cachedir"]) / "pairvm" / "pairs" / "default" / "registry.json"
    return json.loads(path.read_text())


def test_only_the_pairs_hosts_reach_the_runners_they_need(session, lab, salt_master, salt_cli, salt_run_cli,
                                                          strangers):
    before = registry(salt_master)
    # Positive control: a pair host runs its function through publish.runner: a job, whose
    # result only that host reads.
    own = salt_cli.run("publish.runner", "pairvm.host_chkconfig", f"arg={json.dumps([VM])}",
                       minion_tgt="hostA")
    token = own.data["job"]
    assert strangers["hostC"]("pairvm.host_job", token) == {
        "error": f"job {token} was not started by hostC", "retcode": 1}

    def ask():
        answer = salt_cli.run("publish.runner", "pairvm.host_job", f"arg={json.dumps([token])}",
                              minion_tgt="hostA").data
        return answer["result"] if answer.get("done") else None

    assert "summary" in wait_for(ask, "the chkconfig job", timeout=120, interval=2)
    # A pair host may run only the functions its host command needs.
    destroy = salt_cli.run("publish.runner", "pairvm.destroy", f"arg={json.dumps([VM, 'confirm=True'])}",
                           minion_tgt="hostA")
    assert destroy.data == {}, destroy
    # A host of another pair: in the ACL for its own pair, refused this pair's VM.
    other = strangers["hostC"]("pairvm.host_cdrom", VM, "eject=True")
    assert other == {"error": f"VM {VM} is not a VM of hostC's pair", "retcode": 1}, other
    assert strangers["hostC"]("pairvm.destroy", VM, "confirm=True") == {}
    # An id the ACL does not list, though it starts like a listed one.
    assert strangers["hostA2"]("pairvm.host_create", "intruder", "here", "128", DISC) == {}
    assert strangers["hostA2"]("pairvm.host_chkconfig") == {}
    assert footprint(lab, "intruder") == NOTHING and footprint(lab, VM)["hostA"]["lvs"] == [f"here/{VM}"]
    assert registry(salt_master) == before
    # The ACL the master runs is the product's (salt-run pairvm.peer_acl) for the lab's pairs.
    product = salt_run_cli.run("pairvm.peer_acl").data["peer_run"]
    assert set(product) == {"^hostA$", "^hostB$", "^hostC$", "^hostD$"}  # hostD: hostC's pair
    running = salt_master.config["peer_run"]  # (saltfactories hands it out as immutable lists)
    assert {key: list(running.get(key) or []) for key in product} == product


# --- the master stopped (last: it restarts the master) -------------------------------------------


def test_create_with_the_master_stopped_says_so_and_creates_nothing(session, lab, salt_master, salt_cli):
    salt_master.terminate()
    try:
        started = time.monotonic()
        done = pairvm(lab, "create", "myvm2", "here", "128", DISC, timeout=120)
        took = time.monotonic() - started
    finally:
        salt_master.start()
        wait_for(lambda: sorted(salt_cli.run("test.ping", minion_tgt="*").data or {}) == ["hostA", "hostB"],
                 "both minions back on the master", timeout=120, interval=2)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("pairvm: the master cannot be reached (10.77.0.1:")
    assert done.stderr.endswith(
        "nothing was done. On the master, run: salt-run pairvm.create myvm2 hostA 128 20M\n")
    assert footprint(lab, "myvm2") == NOTHING
    print(f"\ncreate with the master stopped: refused in {took:.1f} s")
