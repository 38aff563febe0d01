"""pairvm.image: catalogue and input checks, the seed's files, fetch/verify/write, the host command."""

import crypt
import hashlib
import http.server
import io
import json
import re
import subprocess
import threading
from pathlib import Path

import pytest
import yaml

from salt.exceptions import CommandExecutionError, SaltInvocationError
from tests.unit.conftest import load
from tests.unit.test_pairvm_module import drbd_state, pairvm

schema = load("_utils/pairvm_schema.py", "pairvm_schema_for_image")
seed = load("_utils/pairvm_seed.py", "pairvm_seed")
cli = load("salt/pairvm/files/pairvm", "pairvm_cli_for_image")

PLAINTEXT = "correct horse battery staple"
HASH = crypt.crypt(PLAINTEXT, crypt.mksalt(crypt.METHOD_SHA512))
SHA = "a" * 64


# --- schema -------------------------------------------------------------------------------------


def test_catalogue_is_normalized():
    images = schema.images({"images": {
        "bookworm": {"source": "https://images.example.net/bookworm.qcow2", "format": "qcow2",
                     "sha256": SHA.upper()},
        "local.raw": {"source": "/srv/images/x.raw", "format": "raw", "sha256": SHA},
    }})
    assert images["bookworm"]["sha256"] == SHA and images["local.raw"]["format"] == "raw"
    assert schema.images({}) == {}


@pytest.mark.parametrize("entry, why", [
    ({"source": "ftp://x/y", "format": "raw", "sha256": SHA}, "images.b.source: must be an absolute path"),
    ({"source": "relative.raw", "format": "raw", "sha256": SHA}, "images.b.source"),
    ({"source": "/a/../etc/shadow", "format": "raw", "sha256": SHA}, "images.b.source"),
    ({"source": "/x.raw", "format": "vmdk", "sha256": SHA}, "images.b.format: must be one of raw, qcow2"),
    ({"source": "/x.raw", "format": "raw", "sha256": "abc"}, "images.b.sha256: must be 64 hexadecimal"),
    ({"source": "/x.raw", "format": "raw"}, "images.b.sha256: is required"),
    ({"source": "/x.raw", "format": "raw", "sha256": SHA, "extra": 1}, "unknown key(s) extra"),
])
def test_a_bad_catalogue_entry_is_named(entry, why):
    with pytest.raises(SaltInvocationError, match=re.escape(why)):
        schema.images({"images": {"b": entry}})


def test_a_bad_image_name_is_refused():
    with pytest.raises(SaltInvocationError, match="is not an image name"):
        schema.images({"images": {"../x": {"source": "/x", "format": "raw", "sha256": SHA}}})


@pytest.mark.parametrize("name", ["vm1.example.org", "a.b", "Web-1.Example.ORG.", "x" * 63 + ".org"])
def test_valid_fqdns(name):
    assert schema.validate_fqdn(name) == name.rstrip(".").lower()


@pytest.mark.parametrize("name", ["vm1", "", "-a.org", "a-.org", "a..org", "a.123", "a_b.org",
                                  "x" * 64 + ".org", ("a" * 62 + ".") * 4 + "org", "a b.org", None])
def test_invalid_fqdns_are_refused(name):
    with pytest.raises(SaltInvocationError, match="not a fully qualified domain name"):
        schema.validate_fqdn(name)


def test_only_a_sha512_crypt_hash_is_a_password_hash():
    assert schema.is_password_hash(HASH)
    assert schema.is_password_hash("$6$rounds=5000$" + HASH.split("$", 3)[2] + "$" + HASH.split("$")[-1])
    for bad in (PLAINTEXT, "$1$abc$def", "$5$salt$" + "a" * 43, HASH + "x", None, 6):
        assert not schema.is_password_hash(bad)


def test_guest_ssh_keys():
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA root@admin"
    assert schema.guest_ssh_keys({"guest_ssh_keys": [key + " "]}) == [key]
    assert schema.guest_ssh_keys({}) == []
    with pytest.raises(SaltInvocationError, match=re.escape("guest_ssh_keys[0]")):
        schema.guest_ssh_keys({"guest_ssh_keys": ["not a key\nssh-rsa AAAA"]})


# --- seed files ---------------------------------------------------------------------------------

RECORD = {"name": "vm1", "ip": "10.79.0.5", "prefix": 24, "gateway": "10.79.0.1", "mac": "52:54:00:00:00:01"}


def test_seed_files_carry_the_hash_the_keys_the_script_and_the_network():
    files = seed.files(RECORD, "pairvm-vm1-1", "vm1.example.org", HASH, ["ssh-ed25519 AAAA k"],
                       "#!/bin/sh\necho hi\n")
    assert yaml.safe_load(files["meta-data"]) == {"instance-id": "pairvm-vm1-1",
                                                  "local-hostname": "vm1.example.org"}
    assert files["user-data"].startswith("#cloud-config\n")
    user = yaml.safe_load(files["user-data"])
    root = {"name": "root", "password": HASH, "type": "hash"}
    assert user["chpasswd"] == {"expire": False, "users": [root]}
    assert user["ssh_authorized_keys"] == ["ssh-ed25519 AAAA k"] and user["disable_root"] is False
    assert (user["hostname"], user["fqdn"]) == ("vm1", "vm1.example.org")
    assert user["write_files"][0]["content"] == "#!/bin/sh\necho hi\n"
    assert user["runcmd"] == [[user["write_files"][0]["path"]]]
    net = yaml.safe_load(files["network-config"])
    assert net == {"version": 1, "config": [{
        "type": "physical", "name": "eth0", "mac_address": "52:54:00:00:00:01",
        "subnets": [{"type": "static", "address": "10.79.0.5", "netmask": "255.255.255.0",
                     "gateway": "10.79.0.1"}]}]}


def test_seed_without_keys_or_script_has_neither():
    user = yaml.safe_load(seed.user_data(HASH, "vm1.example.org"))
    assert "ssh_authorized_keys" not in user and "runcmd" not in user and "write_files" not in user


# --- pairvm.image against the fake host of test_pairvm_module --------------------------------------

from tests.unit.test_pairvm_module import Host  # noqa: E402 - after the pure tests on purpose


@pytest.fixture
def host(tmp_path, monkeypatch, loader_mock):
    return Host("hostA", tmp_path, monkeypatch, loader_mock)


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
    monkeypatch.setattr(pairvm, "_drbd_device", lambda record: str(device))
    monkeypatch.setattr(pairvm, "SEED_DIR", str(tmp_path / "seeds"))
    monkeypatch.setattr(pairvm, "IMAGE_CACHE_DIR", str(tmp_path / "cache"))
    real = host.salt["cmd.run_all"].side_effect

    def run_all(argv, **kwargs):
        if argv[0] == "blockdev":
            host.log.append(("cmd.run_all", (argv,), kwargs))
            return {"retcode": 0, "stdout": str(device.stat().st_size), "stderr": ""}
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
    imaging["device"].write_bytes(b"\0" * 1024)
    no_change(host, imaging, lambda: pairvm.image("vm1", "small", "vm1.example.org", HASH), "do not fit")


def test_a_failed_write_demotes_again(host, imaging, monkeypatch):
    monkeypatch.setattr(pairvm, "_copy_raw", lambda *a: (_ for _ in ()).throw(OSError("I/O error")))
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
    cache = Path(pairvm.IMAGE_CACHE_DIR)
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
    assert list(Path(pairvm.IMAGE_CACHE_DIR).iterdir()) == []
    assert [c for c in host.actions() if c.startswith("drbd.")] == [] and not imaging["seed"].exists()


# --- the host command ------------------------------------------------------------------------------


class Stdin(io.StringIO):
    def __init__(self, text, tty=False):
        super().__init__(text)
        self.tty = tty

    def isatty(self):
        return self.tty


def test_host_command_reads_the_password_from_stdin_and_passes_only_a_hash(monkeypatch, capsys):
    monkeypatch.setattr(cli.sys, "stdin", Stdin(PLAINTEXT + "\n"))
    function, kwargs = cli.build_image(["vm1", "bookworm", "vm1.example.org", "-", "setup.sh"])
    assert function == "pairvm.image" and kwargs["firstboot"].endswith("/setup.sh")
    assert crypt.crypt(PLAINTEXT, kwargs["password"]) == kwargs["password"]
    argv = cli.salt_argv(function, kwargs)
    assert "--local" not in argv and PLAINTEXT not in " ".join(argv)
    assert "password" in argv[argv.index("--") - 1]  # --no-parse: the hash passes verbatim
    assert capsys.readouterr().err == ""


def test_host_command_prompts_on_a_terminal(monkeypatch):
    monkeypatch.setattr(cli.sys, "stdin", Stdin("", tty=True))
    answers = iter([PLAINTEXT, PLAINTEXT])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    _, kwargs = cli.build_image(["vm1", "bookworm", "vm1.example.org"])
    assert crypt.crypt(PLAINTEXT, kwargs["password"]) == kwargs["password"]


def test_host_command_warns_about_a_plaintext_argument_and_takes_a_hash_as_it_is(capsys):
    _, kwargs = cli.build_image(["vm1", "bookworm", "vm1.example.org", PLAINTEXT])
    assert kwargs["password"].startswith("$6$") and "process list" in capsys.readouterr().err
    _, kwargs = cli.build_image(["vm1", "bookworm", "vm1.example.org", HASH])
    assert kwargs["password"] == HASH and capsys.readouterr().err == ""


def test_host_command_hashes_with_openssl_without_crypt(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "crypt", None)  # import crypt -> ImportError
    hashed = cli.sha512_crypt(PLAINTEXT)
    assert crypt.crypt(PLAINTEXT, hashed) == hashed


@pytest.mark.parametrize("argv, why", [
    (["vm1", "bookworm"], "missing HOSTNAME"),
    (["vm1"], "missing DIST"),
    (["vm1", "d", "h.org", "-", "f", "x"], "unexpected argument 'x'"),
    (["vm1", "--now", "d", "h.org"], "unknown option '--now'"),
    (["Bad", "d", "h.org", HASH], "invalid VM name"),
])
def test_host_command_usage_errors(argv, why):
    with pytest.raises(cli.Usage, match=why):
        cli.build_image(argv)


def test_host_command_runs_image_with_progress(monkeypatch, capsys):
    calls = []

    def fake(argv):
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, json.dumps({"local": {
            "name": "vm1", "changes": ["copy x -> /dev/drbd0 (raw)"], "comment": "done"}}), "")

    monkeypatch.setattr(cli, "run_showing_progress", fake)
    assert cli.main(["image", "vm1", "bookworm", "vm1.example.org", HASH]) == 0
    assert calls and "pairvm.image" in calls[0]
    assert "copy x" in capsys.readouterr().out


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
