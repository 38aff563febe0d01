"""_modules/pairvm_image.py against the fake host: fetch, verify, write through DRBD, the seed."""

import crypt
import hashlib
import http.server
import json
import re
import subprocess
import threading
from pathlib import Path

import pytest
import yaml

from pairvmlib import layout
from salt.exceptions import CommandExecutionError
from tests.unit.fakehost import MODULES, PAIRVM, Host, drbd_state

pairvm = PAIRVM  # image with start and cdrom: the seed is the VM's CD at its next start
PLAINTEXT = "correct horse battery staple"
HASH = crypt.crypt(PLAINTEXT, crypt.mksalt(crypt.METHOD_SHA512))
SHA = "a" * 64


@pytest.fixture
def imaging(host, tmp_path, monkeypatch):
    """vm1 stopped and in sync; a raw image in the catalogue; the 'DRBD device' a file."""
    data = b"PAIRVM-RAW" + bytes(range(256)) * 4096
    src = tmp_path / "img" / "small.raw"
    src.parent.mkdir()
    src.write_bytes(data)
    host.pillar["pairvm"]["images"] = {
        "small": {"source": str(src), "format": "raw", "sha256": hashlib.sha256(data).hexdigest()},
        "wrong": {"source": str(src), "format": "raw", "sha256": SHA},
    }
    host.pillar["pairvm"]["guest_ssh_keys"] = ["ssh-ed25519 AAAAkey admin"]
    host.install("vm1", drbd=drbd_state())
    device = tmp_path / "drbd0"
    device.write_bytes(b"\0" * (8 * 2**20))
    monkeypatch.setattr(layout, "drbd_device", lambda minor: str(device))
    real = host.salt["cmd.run_all"].side_effect

    def run_all(argv, **kwargs):
        if argv[0] in ("genisoimage", "xorriso", "qemu-img"):
            host.log.append(("cmd.run_all", (argv,), kwargs))
            assert kwargs["python_shell"] is False
            proc = subprocess.run(argv, capture_output=True, text=True, check=False)
            return {"retcode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}
        return real(argv, **kwargs)

    host.salt["cmd.run_all"].side_effect = run_all
    events = []
    host.salt["event.send"] = lambda tag, data: events.append((tag, data))
    return {"data": data, "device": device, "seed": tmp_path / "seeds" / "vm1.iso", "events": events,
            "src": src}


def iso_member(iso, name):
    return subprocess.run(["isoinfo", "-i", str(iso), "-J", "-x", f"/{name}"], capture_output=True,
                          text=True, check=True).stdout


def test_image_writes_the_raw_image_through_drbd_and_builds_the_seed(host, imaging):
    result = pairvm.image("vm1", "small", "vm1.example.org", HASH)
    data = imaging["data"]
    assert imaging["device"].read_bytes()[: len(data)] == data
    assert [c for c in host.actions() if c.startswith("drbd.")] == ["drbd.primary", "drbd.secondary"]
    assert oct(imaging["seed"].stat().st_mode & 0o777) == "0o600"
    assert not [p for p in imaging["seed"].parent.iterdir() if p.name != "vm1.iso"]  # no work files left
    assert "cidata" in subprocess.run(["isoinfo", "-d", "-i", str(imaging["seed"])],
                                      capture_output=True, text=True, check=True).stdout
    user = yaml.safe_load(iso_member(imaging["seed"], "user-data"))
    assert user["chpasswd"]["users"][0]["password"] == HASH
    assert yaml.safe_load(iso_member(imaging["seed"], "network-config"))["config"][0]["subnets"][0][
        "address"] == "10.79.0.5"
    assert HASH not in json.dumps(result)
    tags = {tag for tag, _ in imaging["events"]}
    assert tags == {"pairvm/image/vm1/progress"}
    phases = [data["phase"] for _, data in imaging["events"]]
    assert list(dict.fromkeys(phases)) == ["verify", "write"]
    assert imaging["events"][-1][1]["bytes"] == len(data)


def test_the_next_start_boots_with_the_seed_and_eject_removes_it(host, imaging):
    pairvm.image("vm1", "small", "vm1.example.org", HASH)
    host.new_job()
    pairvm.start("vm1")
    assert f"file=\"{imaging['seed']}\"" in host.defined[-1].replace("'", '"')
    result = pairvm.cdrom("vm1", eject=True)
    assert result["changes"][-1] == f"rm {imaging['seed']}" and not imaging["seed"].exists()


def test_test_true_lists_the_steps_and_changes_nothing(host, imaging):
    before = host.snapshot()
    result = pairvm.image("vm1", "small", "vm1.example.org", HASH, test=True)
    assert result["changes"][0].startswith(f"sha256sum {imaging['src']}")
    copy = f"copy {imaging['src']} -> {imaging['device']} (raw)"
    assert result["changes"][2:5] == ["drbdadm primary vm1", copy, "drbdadm secondary vm1"]
    assert "-volid cidata" in result["changes"][5] and result["comment"].startswith("would:")
    assert host.snapshot() == before and host.actions() == []


def no_change(host, imaging, call, why):
    before = host.snapshot()
    with pytest.raises(CommandExecutionError, match=why) as exc:
        call()
    assert host.snapshot() == before
    assert [c for c in host.actions() if c.startswith("drbd.")] == []
    assert not imaging["seed"].exists()
    return str(exc.value)


@pytest.mark.parametrize("args, why", [
    (("vm1", "nosuch", "vm1.example.org", HASH), r"unknown image 'nosuch'; known images: small, wrong"),
    (("vm1", "small", "vm1", HASH), "not a fully qualified domain name"),
    (("vm1", "small", "vm1.example.org", "$1$x$y"), "not a SHA-512 crypt hash"),
    (("vm1", "wrong", "vm1.example.org", HASH), "the catalogue says aaaa.*nothing was written"),
    (("vm1", "small", "vm1.example.org", HASH, "relative.sh"), "not an absolute path"),
    (("vm1", "small", "vm1.example.org", HASH, "/nonexistent.sh"), "is not a file"),
])
def test_bad_input_changes_nothing(host, imaging, args, why):
    no_change(host, imaging, lambda: pairvm.image(*args), why)


def test_a_plaintext_password_is_refused_without_being_echoed(host, imaging):
    message = no_change(host, imaging, lambda: pairvm.image("vm1", "small", "vm1.example.org", PLAINTEXT),
                        "not a SHA-512 crypt hash")
    assert PLAINTEXT not in message


@pytest.mark.parametrize("state, why", [
    (drbd_state(connection="WFConnection", peer_disk="DUnknown"), "not Connected"),
    (drbd_state(peer_disk="Inconsistent"), "not both UpToDate"),
    (drbd_state(peer_role="Primary"), "Primary on the peer"),
])
def test_an_unsafe_drbd_state_is_refused(host, imaging, state, why):
    host.drbd["vm1"] = state
    no_change(host, imaging, lambda: pairvm.image("vm1", "small", "vm1.example.org", HASH), why)


def test_a_running_vm_is_refused(host, imaging):
    host.install("vm1", drbd=drbd_state(role="Primary"), domain="running")
    no_change(host, imaging, lambda: pairvm.image("vm1", "small", "vm1.example.org", HASH),
              "is running on hostA")


def test_the_away_host_is_refused(tmp_path, monkeypatch, loader_mock):
    peer = Host("hostB", tmp_path, monkeypatch, loader_mock)
    peer.install("vm1", drbd=drbd_state())
    with pytest.raises(CommandExecutionError, match="home is hostA, not hostB"):
        pairvm.image("vm1", "small", "vm1.example.org", HASH)


def test_an_image_larger_than_the_disc_is_refused_after_promoting_nothing(host, imaging):
    host.lvs["here/vm1"] = 1  # MiB: a DRBD data area of 984 KiB, less than the image
    no_change(host, imaging, lambda: pairvm.image("vm1", "small", "vm1.example.org", HASH), "do not fit")


def test_a_failed_write_demotes_again(host, imaging, monkeypatch):
    monkeypatch.setattr(MODULES["pairvm_image"], "_copy_raw",
                        lambda *a: (_ for _ in ()).throw(OSError("I/O error")))
    with pytest.raises(OSError):
        pairvm.image("vm1", "small", "vm1.example.org", HASH)
    assert [c for c in host.actions() if c.startswith("drbd.")] == ["drbd.primary", "drbd.secondary"]


def test_qcow2_is_converted_with_qemu_img(host, imaging, tmp_path):
    qcow2 = tmp_path / "img" / "small.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(imaging["src"]), str(qcow2)],
                   check=True)
    host.pillar["pairvm"]["images"]["q"] = {"source": str(qcow2), "format": "qcow2",
                                            "sha256": hashlib.sha256(qcow2.read_bytes()).hexdigest()}
    result = pairvm.image("vm1", "q", "vm1.example.org", HASH)
    assert f"qemu-img convert -p -n -f qcow2 -O raw {qcow2} {imaging['device']}" in result["changes"]
    assert imaging["device"].read_bytes()[: len(imaging["data"])] == imaging["data"]


def test_a_raw_file_listed_as_qcow2_is_refused(host, imaging):
    host.pillar["pairvm"]["images"]["q"] = dict(host.pillar["pairvm"]["images"]["small"], format="qcow2")
    no_change(host, imaging, lambda: pairvm.image("vm1", "q", "vm1.example.org", HASH), "is raw, not qcow2")


# --- download: resume with Range, cache by sha256 -------------------------------------------------


class RangeHandler(http.server.BaseHTTPRequestHandler):
    body = b""
    ranges = []

    def do_GET(self):  # noqa: N802 - http.server's name
        wanted = re.fullmatch(r"bytes=([0-9]+)-", self.headers.get("Range", ""))
        RangeHandler.ranges.append(self.headers.get("Range"))
        start = int(wanted[1]) if wanted else 0
        self.send_response(206 if wanted else 200)
        self.send_header("Content-Length", str(len(self.body) - start))
        self.end_headers()
        self.wfile.write(self.body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    RangeHandler.body, RangeHandler.ranges = bytes(range(256)) * 8192, []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/image.raw"
    httpd.shutdown()
    httpd.server_close()


def test_a_download_resumes_a_partial_file_then_is_cached_by_sha256(host, imaging, server):
    body = RangeHandler.body
    sha = hashlib.sha256(body).hexdigest()
    host.pillar["pairvm"]["images"]["net"] = {"source": server, "format": "raw", "sha256": sha}
    cache = Path(layout.IMAGE_CACHE_DIR)
    cache.mkdir()
    (cache / f"{sha}.part").write_bytes(body[:1000])
    result = pairvm.image("vm1", "net", "vm1.example.org", HASH)
    assert RangeHandler.ranges == ["bytes=1000-"]
    assert (cache / sha).read_bytes() == body and not (cache / f"{sha}.part").exists()
    assert imaging["device"].read_bytes()[: len(body)] == body
    assert any(c.startswith(f"download {server}") for c in result["changes"])
    download = [data for _, data in imaging["events"] if data["phase"] == "download"]
    assert download[-1]["bytes"] == download[-1]["total"] == len(body)
    host.new_job()
    again = pairvm.image("vm1", "net", "vm1.example.org", HASH)
    assert RangeHandler.ranges == ["bytes=1000-"]  # served from the cache
    assert again["changes"][0].startswith(f"sha256sum {cache / sha} (cached net")


def test_a_wrong_download_is_removed_and_nothing_is_written(host, imaging, server):
    host.pillar["pairvm"]["images"]["net"] = {"source": server, "format": "raw", "sha256": SHA}
    no_change_but_cache = imaging["device"].read_bytes()
    with pytest.raises(CommandExecutionError, match="nothing was written"):
        pairvm.image("vm1", "net", "vm1.example.org", HASH)
    assert imaging["device"].read_bytes() == no_change_but_cache
    assert list(Path(layout.IMAGE_CACHE_DIR).iterdir()) == []
    assert [c for c in host.actions() if c.startswith("drbd.")] == [] and not imaging["seed"].exists()


def test_a_new_image_replaces_the_seed_and_a_refused_one_keeps_it(host, imaging):
    pairvm.image("vm1", "small", "vm1.example.org", HASH)
    first = imaging["seed"].read_bytes()
    host.new_job()
    with pytest.raises(CommandExecutionError, match="nothing was written"):
        pairvm.image("vm1", "wrong", "vm2.example.org", HASH)
    assert imaging["seed"].read_bytes() == first
    host.new_job()
    result = pairvm.image("vm1", "small", "vm2.example.org", HASH)
    assert f"rm {imaging['seed']} (the seed of the previous image)" in result["changes"]
    assert "vm2.example.org" in iso_member(imaging["seed"], "meta-data")
