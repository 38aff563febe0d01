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
    host.pillar["pairvm"]["default_images"] = False  # only the test's entries
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
    (("vm1", "small", "vm_1", HASH), "'vm_1' is not a valid host name"),
    (("vm1", "small", None, None), "not a SHA-512 crypt hash"),
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


def test_the_guest_is_named_after_the_vm_with_the_pillar_domain_by_default(host, imaging):
    pairvm.image("vm1", "small", password=HASH)
    assert "local-hostname: vm1\n" in iso_member(imaging["seed"], "meta-data")
    host.new_job()
    host.pillar["pairvm"]["guest_domain"] = "example.org"
    result = pairvm.image("vm1", "small", password=HASH)
    assert "local-hostname: vm1.example.org\n" in iso_member(imaging["seed"], "meta-data")
    assert result["comment"].endswith("as hostname vm1.example.org")


# --- a distribution's checksum file beside the image (the default catalogue's way) ----------------


class MirrorHandler(http.server.BaseHTTPRequestHandler):
    files, requests = {}, []

    def do_GET(self):  # noqa: N802 - http.server's name
        MirrorHandler.requests.append(self.path)
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def mirror(host, imaging):
    """A mirror laid out like cloud.debian.org on loopback: the default catalogue points at it."""
    good, tampered = b"DEBIAN-13" * 40000, b"DEBIAN-13" * 39999 + b"TAMPERED!"
    sums = "".join(f"{hashlib.sha512(body).hexdigest()}  {name}\n"
                   for name, body in (("debian-13-generic-amd64.raw", good), ("evil.raw", good)))
    MirrorHandler.files = {"/d/trixie/latest/debian-13-generic-amd64.raw": good,
                           "/d/trixie/latest/SHA512SUMS": sums.encode(),
                           "/d/trixie/latest/evil.raw": tampered,
                           "/d/trixie/latest/unlisted.raw": good}
    MirrorHandler.requests = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), MirrorHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    host.pillar["pairvm"].update(default_images=True, image_mirrors={
        "debian": f"http://127.0.0.1:{httpd.server_address[1]}/d"})
    host.pillar["pairvm"]["images"].update({
        "trixie": {"path": "trixie/latest/debian-13-generic-amd64.raw", "format": "raw"},
        "evil": {"mirror": "debian", "path": "trixie/latest/evil.raw", "format": "raw",
                 "checksums": "SHA512SUMS"},
        "unlisted": {"mirror": "debian", "path": "trixie/latest/unlisted.raw", "format": "raw",
                     "checksums": "SHA512SUMS"}})
    yield {"good": good, "sha512": hashlib.sha512(good).hexdigest()}
    httpd.shutdown()
    httpd.server_close()


def test_a_default_image_is_checked_against_the_checksum_file_beside_it(host, imaging, mirror):
    result = pairvm.image("vm1", "trixie", password=HASH)
    cache = Path(layout.IMAGE_CACHE_DIR)
    assert (cache / mirror["sha512"]).read_bytes() == mirror["good"]
    assert imaging["device"].read_bytes()[: len(mirror["good"])] == mirror["good"]
    assert f"sha512sum {cache / mirror['sha512']}.part (expect {mirror['sha512']}), then rename it to " \
           f"{cache / mirror['sha512']}" in result["changes"]
    assert MirrorHandler.requests == ["/d/trixie/latest/SHA512SUMS",
                                      "/d/trixie/latest/debian-13-generic-amd64.raw"]


def test_a_tampered_image_is_refused_and_nothing_is_written(host, imaging, mirror):
    message = no_change(host, imaging, lambda: pairvm.image("vm1", "evil", password=HASH),
                        "sha512 of the download is .*/SHA512SUMS says .*nothing was written")
    assert "tampered" in message
    assert list(Path(layout.IMAGE_CACHE_DIR).iterdir()) == []


def test_an_image_its_checksum_file_does_not_list_is_refused_before_downloading(host, imaging, mirror):
    no_change(host, imaging, lambda: pairvm.image("vm1", "unlisted", password=HASH),
              "SHA512SUMS does not list unlisted.raw: nothing was written")
    assert MirrorHandler.requests == ["/d/trixie/latest/SHA512SUMS"]


def test_a_checksum_file_that_cannot_be_fetched_is_named(host, imaging, mirror):
    del MirrorHandler.files["/d/trixie/latest/SHA512SUMS"]
    no_change(host, imaging, lambda: pairvm.image("vm1", "trixie", password=HASH),
              "cannot fetch the checksum file http://127.0.0.1:[0-9]+/d/trixie/latest/SHA512SUMS: HTTP 404")


def test_a_local_image_may_have_its_checksum_file_beside_it_too(host, imaging):
    sums = imaging["src"].parent / "SHA256SUMS"
    sums.write_text(f"{hashlib.sha256(imaging['data']).hexdigest()} *small.raw\n")
    host.pillar["pairvm"]["images"]["small"] = {"source": str(imaging["src"]), "format": "raw",
                                                "checksums": "SHA256SUMS"}
    result = pairvm.image("vm1", "small", password=HASH)
    assert result["changes"][0].startswith(f"sha256sum {imaging['src']} (expect ")
