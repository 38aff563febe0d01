"""Installing a guest OS with pairvm.image, from the master and with the host command.

A small raw image (a local path on the home host) and a qcow2 image (served
over HTTP on hostA's own loopback) with known content and sha256 in the
catalogue; after each image, the home host's backing LV holds that content.
That the peer's disc gets it too is not claimed here: while connected, the
DRBD shim maps both hosts' /dev/drbdN to one block device, so reading both
would read the same bytes twice. tests/kernel/test_data_paths.py shows it on
real DRBD 8.4 (the peer's backing LV, read after disconnecting it). The seed
ISO is checked, the test guest boots with it and prints the seed's host
name, bad requests change nothing on either host or the master, and no
plaintext password shows up in the minion's logs, caches, the master's job
cache or the process list.
"""

import crypt
import hashlib
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.integration.test_vm_lifecycle import (
    HOSTS,
    boots,
    hv,
    pair_state,
    refusal,
    serial_log,
    wait_for,
    wait_in_sync,
)
from tests.lab.hosts import DATA

VM = "pvm7"
HOSTNAME = "pvm7.example.org"
IMAGE_DIR = "/var/lib/pairvm/test-images"  # on hostA, the VM's home
HTTP_PORT = 8707  # on hostA's own loopback only
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPairvmTestKeyOnlyForTheLab0000000000000 lab@test"
PLAINTEXT = "Pl41n-S3cret-xyzzy-7"  # searched for everywhere afterwards
# A plaintext given to pairvm.image through the master by mistake: refused, but by then the
# master's job cache and log hold it (which is why pairvm.image takes only a hash).
MISTAKE = "a-plaintext-given-by-mistake"
MIB = 2**20
# python's http.server ignores Range: this one answers it (and logs each request's Range).
RANGE_SERVER = """
import http.server, os, re, sys
class Handler(http.server.SimpleHTTPRequestHandler):
    def send_head(self):
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            return super().send_head()
        wanted = re.fullmatch(r"bytes=([0-9]+)-", self.headers.get("Range", ""))
        size, start = os.path.getsize(path), int(wanted[1]) if wanted else 0
        if start >= size and wanted:
            self.send_error(416)
            return None
        f = open(path, "rb")
        f.seek(start)
        self.send_response(206 if wanted else 200)
        self.send_header("Content-Length", str(size - start))
        if wanted:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.end_headers()
        return f
    def log_message(self, fmt, *args):
        sys.stderr.write(f"range={self.headers.get('Range', '-')} {fmt % args}\\n")
        sys.stderr.flush()
os.chdir(sys.argv[1])
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), Handler).serve_forever()
"""


def content(tag, size=16 * MIB):
    """Known, incompressible bytes: a tag, then a hash chain."""
    out, block = bytearray(tag.encode().ljust(512, b"\0")), hashlib.sha256(tag.encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block * 128
    return bytes(out[:size])


def sha512_hash(password):
    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_SHA512))


@pytest.fixture(scope="module")
def images(lab, salt_master, salt_cli):
    """The catalogue in pillar: raw (local path), qcow2 (HTTP on hostA's loopback), a wrong sum."""
    host = lab.hosts["hostA"]
    src = host.root / IMAGE_DIR.lstrip("/")
    src.mkdir(parents=True, exist_ok=True)
    raw, qraw = content("PAIRVM-IMAGE-RAW"), content("PAIRVM-IMAGE-QCOW2")
    (src / "small.raw").write_bytes(raw)
    (src / "q.raw").write_bytes(qraw)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(src / "q.raw"),
                    str(src / "small.qcow2")], check=True)
    (src / "q.raw").unlink()
    qsum = hashlib.sha256((src / "small.qcow2").read_bytes()).hexdigest()
    catalogue = {
        "smallraw": {"source": f"{IMAGE_DIR}/small.raw", "format": "raw",
                     "sha256": hashlib.sha256(raw).hexdigest()},
        "smallqcow": {"source": f"http://127.0.0.1:{HTTP_PORT}/small.qcow2", "format": "qcow2",
                      "sha256": qsum},
        "badsum": {"source": f"{IMAGE_DIR}/small.raw", "format": "raw", "sha256": "0" * 64},
    }
    path = salt_master.config["pillar_roots"]["base"][0] + "/test_vms.sls"
    Path(path).write_text(yaml.safe_dump({"pairvm": {"images": catalogue, "guest_ssh_keys": [SSH_KEY]}}))
    assert salt_cli.run("saltutil.refresh_pillar", "wait=True", minion_tgt="*").returncode == 0
    server_log = open(host.dir / "image-server.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(host.argv(["python3", "-c", RANGE_SERVER, IMAGE_DIR, str(HTTP_PORT)]),
                              stdout=subprocess.DEVNULL, stderr=server_log)
    try:
        wait_for(lambda: host.run(["python3", "-c", f"import urllib.request as u; u.urlopen("
                                   f"'http://127.0.0.1:{HTTP_PORT}/small.qcow2', timeout=2)"],
                                  check=False).returncode == 0, "the image server", timeout=20)
        yield {"raw": raw, "qcow2": qraw, "qcow2_sha256": qsum, "server_log": host.dir / "image-server.log"}
    finally:
        server.terminate()
        server.wait(timeout=10)
        server_log.close()
        Path(path).write_text("{}\n")
        salt_cli.run("saltutil.refresh_pillar", "wait=True", minion_tgt="*")
        shutil.rmtree(src, ignore_errors=True)


@pytest.fixture(scope="module")
def vm(lab, salt_run_cli, salt_cli, images):
    ret = salt_run_cli.run("pairvm.create", VM, "hostA", "128", "64M", "state=stopped",
                           f"hypervisor_options={__import__('json').dumps(hv(VM))}")
    assert ret.returncode == 0, ret
    wait_in_sync(lab, salt_cli, VM)
    yield VM
    salt_run_cli.run("pairvm.destroy", VM, "confirm=True", "force=True")


def disc_sha(lab, size):
    """sha256 of the first ``size`` bytes of the VM's disc on its home hostA: its backing LV
    (what DRBD writes through to; the shim's shared block device while connected)."""
    out = lab.hosts["hostA"].run(["sh", "-c", f"head -c {size} /dev/here/{VM} | sha256sum"]).stdout
    return out.split()[0]


def seed_state(lab, host="hostA"):
    return lab.hosts[host].run(["sh", "-c", f"stat -c %a /var/lib/pairvm/seeds/{VM}.iso 2>/dev/null"],
                               check=False).stdout.strip()


def iso_file(lab, name):
    return lab.hosts["hostA"].run(["isoinfo", "-i", f"/var/lib/pairvm/seeds/{VM}.iso", "-J",
                                   "-x", f"/{name}"]).stdout


def image(salt_cli, *args, host="hostA"):
    return salt_cli.run("pairvm.image", VM, *args, minion_tgt=host)


@pytest.mark.parametrize("args, host, why", [
    (["nosuch", HOSTNAME, "HASH"], "hostA",
     "unknown image 'nosuch'; known images: badsum, bookworm, jammy, noble, smallqcow, smallraw, trixie"),
    (["smallraw", "pvm_7", "HASH"], "hostA", "is not a valid host name"),
    (["smallraw", "bad-.example.org", "HASH"], "hostA", "is not a valid host name"),
    (["smallraw", HOSTNAME, MISTAKE], "hostA", "not a SHA-512 crypt hash"),
    (["smallraw", HOSTNAME, "HASH"], "hostB", "home is hostA, not hostB"),
    (["badsum", HOSTNAME, "HASH"], "hostA", "the catalogue says 0000"),
    (["smallraw", HOSTNAME, "HASH", "firstboot=/nonexistent/script"], "hostA", "is not a file"),
])
def test_bad_requests_are_refused_and_nothing_changes(vm, lab, salt_cli, salt_master, args, host, why):
    args = [sha512_hash(PLAINTEXT) if a == "HASH" else a for a in args]
    before = disc_sha(lab, 16 * MIB), pair_state(lab, salt_master)
    ret = image(salt_cli, *args, host=host)
    assert ret.returncode != 0 and why in refusal(ret), ret
    assert MISTAKE not in refusal(ret)
    assert (disc_sha(lab, 16 * MIB), pair_state(lab, salt_master)) == before
    for h in HOSTS:  # the host asked and the other one: no seed, no role changed
        assert seed_state(lab, h) == ""
        assert salt_cli.run("drbd.status", VM, minion_tgt=h).data["role"] == "Secondary"


def test_test_true_lists_the_steps_and_changes_nothing(vm, lab, salt_cli):
    before = disc_sha(lab, 16 * MIB)
    ret = image(salt_cli, "smallraw", HOSTNAME, sha512_hash(PLAINTEXT), "test=True")
    assert ret.returncode == 0, ret
    steps = ret.data["changes"]
    assert steps[0].startswith(f"sha256sum {IMAGE_DIR}/small.raw")
    assert f"drbdadm primary {VM}" in steps and f"drbdadm secondary {VM}" in steps
    assert any(s.startswith(f"copy {IMAGE_DIR}/small.raw -> /dev/drbd") for s in steps)
    assert "cidata" in steps[-1]
    assert disc_sha(lab, 16 * MIB) == before and seed_state(lab) == ""


def test_raw_image_from_the_master_reaches_both_hosts_and_the_guest_reads_the_seed(
        vm, lab, salt_cli, images):
    password_hash = sha512_hash(PLAINTEXT)
    start = time.monotonic()
    ret = image(salt_cli, "smallraw", HOSTNAME, password_hash)
    took = time.monotonic() - start
    assert ret.returncode == 0, ret
    assert password_hash not in str(ret.data)
    assert disc_sha(lab, len(images["raw"])) == hashlib.sha256(images["raw"]).hexdigest()
    print(f"\nraw image of {len(images['raw']) // MIB} MiB written by salt pairvm.image in {took:.1f} s")
    assert seed_state(lab) == "600"
    assert salt_cli.run("drbd.status", VM, minion_tgt="hostA").data["role"] == "Secondary"
    user_data = iso_file(lab, "user-data")
    assert user_data.startswith("#cloud-config\n") and PLAINTEXT not in user_data
    seeded = yaml.safe_load(user_data)["chpasswd"]["users"][0]
    assert seeded["name"] == "root" and seeded["type"] == "hash"
    assert crypt.crypt(PLAINTEXT, seeded["password"]) == seeded["password"]
    assert yaml.safe_load(user_data)["ssh_authorized_keys"] == [SSH_KEY]
    net = yaml.safe_load(iso_file(lab, "network-config"))["config"][0]
    record = yaml.safe_load(lab.hosts["hostA"].run(["cat", f"/machines/{VM}"]).stdout)
    assert net["mac_address"] == record["mac"]
    assert net["subnets"] == [{"type": "static", "address": record["ip"], "netmask": "255.255.255.0",
                               "gateway": "10.79.0.1"}]
    assert yaml.safe_load(iso_file(lab, "meta-data"))["local-hostname"] == HOSTNAME
    # The next start boots with the seed as its CD; the guest prints its host name.
    host = lab.hosts["hostA"]
    before = boots(host, VM)
    assert salt_cli.run("pairvm.start", VM, minion_tgt="hostA").returncode == 0
    wait_for(lambda: boots(host, VM) > before, f"{VM} to boot", timeout=90)
    wait_for(lambda: f"seed-hostname: {HOSTNAME}" in serial_log(host, VM), "the seed's host name")
    running = image(salt_cli, "smallraw", HOSTNAME, password_hash)
    assert running.returncode != 0 and "is running on hostA" in str(running.data)
    assert salt_cli.run("pairvm.stop", VM, minion_tgt="hostA").returncode == 0


def host_command(lab, config_dir, *args, stdin=None):
    """The host command as pairvm.config installed it, but talking to ``config_dir``."""
    host = lab.hosts["hostA"]
    installed = host.root / "usr/local/sbin/pairvm"
    variant = host.root / "usr/local/sbin/pairvm-test"
    text = installed.read_text()
    config = re.search(r'salt_config_dir="([^"]+)"', text)[1]
    variant.write_text(text.replace(f'salt_config_dir="{config}"', f'salt_config_dir="{config_dir}"'))
    variant.chmod(0o755)
    try:
        return subprocess.run(host.argv(["pairvm-test", *args]), input=stdin, capture_output=True, text=True,
                              timeout=300, check=False)
    finally:
        variant.unlink()


def debug_config_dir(minion):
    """A copy of the minion's config dir whose salt-call logs at debug level, to the same log file."""
    src = Path(minion.config_dir)
    dest = src.parent / (src.name + "-debug")
    shutil.copytree(src, dest, dirs_exist_ok=True)
    config = yaml.safe_load((dest / "minion").read_text())
    config.update(log_level_logfile="debug", log_level="debug")
    (dest / "minion").write_text(yaml.safe_dump(config))
    return dest


class ProcessWatch(threading.Thread):
    """Samples every process's argv (ps -eo args) and the minions' proc/ files until stopped."""

    def __init__(self, proc_dirs):
        super().__init__(daemon=True)
        self.proc_dirs, self.seen, self.samples = proc_dirs, [], 0
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            self.seen.append(subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout)
            for proc_dir in self.proc_dirs:
                for entry in (os.listdir(proc_dir) if os.path.isdir(proc_dir) else []):
                    try:
                        self.seen.append(Path(proc_dir, entry).read_bytes().decode("latin-1"))
                    except OSError:
                        pass
            self.samples += 1
            time.sleep(0.05)


def grep_tree(root, needle):
    """Files under root whose bytes contain needle."""
    hits = subprocess.run(["grep", "-rlaF", "--", needle, str(root)], capture_output=True, text=True)
    return hits.stdout.split()


def test_qcow2_over_http_with_the_host_command_leaks_no_plaintext(
        vm, lab, salt_cli, salt_master, minions, images):
    salt_cli.run("state.apply", "pairvm.config", minion_tgt="hostA")  # installs the command
    minion = minions["hostA"]
    config_dir = debug_config_dir(minion)
    cache = Path(minion.config["cachedir"])
    # A partial download left by an earlier run: the host command resumes it.
    qcow2 = (lab.hosts["hostA"].root / IMAGE_DIR.lstrip("/") / "small.qcow2").read_bytes()
    part = lab.hosts["hostA"].root / f"var/cache/pairvm/images/{images['qcow2_sha256']}.part"
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(qcow2[: len(qcow2) // 2])
    watch = ProcessWatch([str(cache / "proc"), str(Path(salt_master.config["cachedir"]) / "proc")])
    watch.start()
    try:
        run = host_command(lab, config_dir, "image", VM, "smallqcow", "-", "--hostname", HOSTNAME,
                           stdin=PLAINTEXT + "\n")
    finally:
        watch.done.set()
        watch.join()
        shutil.rmtree(config_dir, ignore_errors=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert PLAINTEXT not in run.stdout + run.stderr
    progress = [line for line in run.stderr.splitlines() if line.startswith(f"image {VM}: ")]
    assert progress and "MiB/s" in progress[-1], run.stderr
    print(f"\nhost command progress: {progress[-1]}")
    assert disc_sha(lab, len(images["qcow2"])) == hashlib.sha256(images["qcow2"]).hexdigest()
    assert not part.exists() and (part.parent / images["qcow2_sha256"]).exists()
    assert f"range=bytes={len(qcow2) // 2}- " in images["server_log"].read_text()  # resumed
    user_data = yaml.safe_load(iso_file(lab, "user-data"))
    seeded = user_data["chpasswd"]["users"][0]["password"]
    assert crypt.crypt(PLAINTEXT, seeded) == seeded
    # Nowhere: argv of any process or the proc files while it ran, the minion's and the
    # master's files (logs, job caches), the lab hosts' trees (LVs, seeds, caches).
    assert watch.samples > 3
    assert not [s for s in watch.seen if PLAINTEXT in s]
    log_text = Path(minion.config["log_file"]).read_text(errors="replace")
    assert "pairvm.image" in log_text  # the debug log did record the call
    roots = {Path(minion.config["log_file"]).parent, cache, Path(salt_master.config["cachedir"]),
             Path(salt_master.config["log_file"]).parent, DATA}
    assert not [hit for root in roots for hit in grep_tree(root, PLAINTEXT)]
