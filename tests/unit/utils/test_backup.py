"""Backups: the pure pieces (_utils/pairvm_backup.py, destinations in the schema) and the
constant remote scripts, run by a real /bin/sh on a temporary directory."""

import hashlib
import subprocess

import pytest

from pairvmlib import backup, defaults
from pairvmlib.errors import Invalid

SETTINGS = backup.settings({"port": 2222, "key": "/root/.ssh/bk"})


@pytest.mark.parametrize("text, name, parsed", [
    ("bk@store:/backup/vm1.gz", None, {"user": "bk", "host": "store", "path": "/backup/vm1.gz"}),
    ("bk@store.example.org:/b/_NAME.gz", "web1", {"user": "bk", "host": "store.example.org",
                                                   "path": "/b/web1.gz"}),
    ("bk@10.0.0.5:/b/x y.gz", None, {"user": "bk", "host": "10.0.0.5", "path": "/b/x y.gz"}),
    ("bk@[fd00::5]:/b/x.gz", None, {"user": "bk", "host": "[fd00::5]", "path": "/b/x.gz"}),
])
def test_a_good_destination_is_parsed(text, name, parsed):
    assert backup.parse_destination(text, name) == parsed


@pytest.mark.parametrize("text, why", [
    ("-oProxyCommand=sh@h:/p", "must not start with '-'"),
    ("bk@-oProxyCommand=sh:/p", "the host '-oProxyCommand=sh'"),
    ("bk@h$(reboot):/p", "no '-' first, no whitespace or shell characters"),
    ("bk@h`id`:/p", "shell characters"),
    ("b k@h:/p", "the user 'b k'"),
    ("bk;rm@h:/p", "the user 'bk;rm'"),
    ("bk@h:backup/x.gz", "must be absolute"),
    ("bk@h:/backup/../etc/x", "without '..'"),
    ("bk@h:/backup/x\nrm -rf /", "control characters"),
    ("bk@h:/backup/", "must name a file"),
    ("bk@h", "must be user@host:/path"),
    ("store:/backup/x", "must be user@host:/path"),
    (None, "must be user@host:/path"),
])
def test_a_bad_destination_is_refused_naming_what_is_wrong(text, why):
    with pytest.raises(Invalid, match="destination: ") as err:
        backup.parse_destination(text)
    assert why in str(err.value)


def test_backup_settings_fill_defaults_and_check_each_key():
    assert backup.settings(None) == defaults.BACKUP
    with pytest.raises(Invalid) as err:
        backup.settings({"port": 0, "compress": "bzip2", "speed": -1, "key": "rel",
                                "snapshot_size": "150%", "colour": 1})
    text = str(err.value)
    for part in ("backup.port", "backup.compress", "backup.speed", "backup.key",
                 "backup.snapshot_size", "colour"):
        assert part in text


def test_a_schedule_job_is_validated_and_defaults_come_from_backup():
    settings = backup.settings({"speed": 2048, "schedule": {
        "nightly": {"destination": "bk@h:/b/_NAME.gz", "cron": "30 2 * * *"},
        "web": {"vms": ["web1", "web2"], "destination": "bk@h:/w/_NAME.zst", "cron": "0 */6 * * 1-5",
                "compress": "zstd", "speed": 0}}})
    assert settings["schedule"]["nightly"] == {"vms": "all", "destination": "bk@h:/b/_NAME.gz",
                                               "cron": "30 2 * * *", "speed": 2048, "compress": "gzip"}
    assert settings["schedule"]["web"]["vms"] == ["web1", "web2"]
    with pytest.raises(Invalid) as err:
        backup.settings({"schedule": {"x": {"vms": ["Bad!"], "destination": "-x@h:/p",
                                                   "cron": "3am"}}})
    assert "backup.schedule.x: vms" in str(err.value) and "destination" in str(err.value)
    assert "five cron fields" in str(err.value)


def test_ssh_argv_is_batch_mode_with_the_key_and_the_host_after_double_dash():
    dest = backup.parse_destination("bk@[fd00::5]:/b/x.gz")
    argv = backup.ssh_argv(dest, SETTINGS, "upload")
    assert argv[:2] == ["ssh", "-T"] and "BatchMode=yes" in argv and "StrictHostKeyChecking=yes" in argv
    assert argv[argv.index("-i") + 1] == "/root/.ssh/bk" and argv[argv.index("-p") + 1] == "2222"
    assert argv[-3:] == ["--", "fd00::5", backup.UPLOAD]
    assert "/b/x.gz" not in " ".join(argv)  # the path travels on stdin only


def test_reader_stops_at_the_data_size_and_limits_only_when_asked():
    assert backup.reader_argv("/dev/vg/s", 4096, 1024) == [
        "pv", "-f", "-n", "-b", "-i", "1", "-S", "-s", "4096", "-L", "1024k", "/dev/vg/s"]
    assert "-L" not in backup.reader_argv("/dev/vg/s", 4096, 0)


def test_drbd_data_area_matches_the_84_internal_metadata_formula():
    # 64 MiB LV: 131072 sectors, bitmap 4 sectors (aligned to 8), + 8 + 64 -> 80 sectors of metadata
    assert backup.drbd_data_bytes(64 * 2**20) == (131072 - 80) * 512
    assert backup.drbd_data_bytes(10 * 2**30) == (20971520 - (640 + 8 + 64)) * 512


@pytest.mark.parametrize("running_here, drbd, home, flag, why", [
    (False, {"disk": "UpToDate", "peer_role": "Primary"}, "hostA", False, None),
    (True, {"disk": "UpToDate", "role": "Primary"}, "hostB", False, "it runs on this host"),
    (True, {"disk": "UpToDate", "role": "Primary"}, "hostB", True, None),
    (False, {"disk": "UpToDate", "peer_role": "Secondary"}, "hostB", False, None),
    (False, {"disk": "UpToDate", "peer_role": "Secondary"}, "hostA", False, "home host hostA backs it up"),
    (False, {"disk": "Inconsistent", "peer_role": "Primary"}, "hostA", False, "not UpToDate"),
    (False, {}, "hostA", False, "not up on this host"),
])
def test_eligible_picks_the_host_not_running_the_vm(running_here, drbd, home, flag, why):
    found = backup.eligible({"home": home}, "hostB", running_here, drbd, flag)
    assert (found is None) if why is None else (why in found), found


def test_compression_is_detected_from_the_first_bytes():
    assert backup.detect_compression(b"\x1f\x8b\x08\x00") == "gzip"
    assert backup.detect_compression(b"\x28\xb5\x2f\xfd\x00") == "zstd"
    assert backup.detect_compression(b"PK\x03\x04") is None
    assert backup.snapshot_size_kwarg("20%") == {"extents": "20%ORIGIN"}
    assert backup.snapshot_size_kwarg("2G") == {"size": "2G"}


def sh(script, stdin, cwd):
    return subprocess.run(["/bin/sh", "-c", script], input=stdin, capture_output=True, cwd=cwd, check=False)


HOSTILE = "/x $(touch pwned); `touch pwned2` 'q\" *.gz"


def test_remote_scripts_take_the_path_from_stdin_and_never_interpret_it(tmp_path):
    dest = f"{tmp_path}/sub{HOSTILE}"
    data = b"\x1f\x8b compressed bytes \n with newlines \n" * 100
    up = sh(backup.UPLOAD, dest.encode() + b"\n" + data, tmp_path)
    assert up.returncode == 0, up.stderr
    ready, answer = up.stdout.decode().splitlines()
    digest = hashlib.sha256(data).hexdigest()
    assert ready == "ready" and backup.parse_remote_sum(answer) == (digest, len(data))
    assert not list(tmp_path.rglob("pwned*"))
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [f"{HOSTILE.split('/')[-1]}.partial"]

    commit = sh(backup.COMMIT, f"{dest}\n{digest}\n".encode(), tmp_path)
    assert commit.returncode == 0 and commit.stdout == b"committed\n", commit
    final = tmp_path / f"sub{HOSTILE}"
    assert final.read_bytes() == data
    assert (final.parent / (final.name + ".sha256")).read_text() == f"{digest}  {final.name}\n"
    for mode, actual in (("stat", "-"), ("check", digest)):
        fetched = sh(backup.FETCH, f"{dest}\n{mode}\n".encode(), tmp_path).stdout
        head, rest = fetched.split(b"\n", 1)
        assert head.decode() == f"{digest} {len(data)} {actual} 1f 8b 20 63" and rest == data
        assert backup.parse_fetched(head.decode()) == {
            "stored": digest, "size": len(data), "actual": None if actual == "-" else digest,
            "compression": "gzip"}
    assert not list(tmp_path.rglob("pwned*"))


def test_fetch_with_check_sends_nothing_of_a_damaged_file(tmp_path):
    (tmp_path / "vm1.zst").write_bytes(b"\x28\xb5\x2f\xfd damaged")
    (tmp_path / "vm1.zst.sha256").write_text(f"{'0' * 64}  vm1.zst\n")
    fetched = sh(backup.FETCH, f"{tmp_path}/vm1.zst\ncheck\n".encode(), tmp_path)
    actual = hashlib.sha256(b"\x28\xb5\x2f\xfd damaged").hexdigest()
    assert fetched.returncode == 0 and fetched.stdout.decode() == f"{'0' * 64} 12 {actual} 28 b5 2f fd\n"
    assert backup.parse_fetched(fetched.stdout.decode())["compression"] == "zstd"
    missing = sh(backup.FETCH, f"{tmp_path}/vm2.gz\nstat\n".encode(), tmp_path)
    assert missing.returncode != 0 and missing.stdout == b"" and b"vm2.gz.sha256" in missing.stderr


def test_upload_refuses_before_ready_when_the_file_cannot_be_made(tmp_path):
    (tmp_path / "vm1.gz.partial").mkdir()
    (tmp_path / "vm2.gz").mkdir()
    for name, why in (("vm1.gz", b"Is a directory"), ("vm2.gz", b"vm2.gz: Is a directory")):
        up = sh(backup.UPLOAD, f"{tmp_path}/{name}\n".encode() + b"data", tmp_path)
        assert up.returncode != 0 and why in up.stderr and up.stdout == b"", up


def test_upload_spoils_its_checksum_when_the_file_is_not_all_written(tmp_path):
    """tee passes the whole stream on (the hash) even when the file fails: the sums must differ."""
    data = b"x" * 4096
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "tee").write_text('#!/bin/sh\ncat\nexit 1\n')  # writes nothing to the file, then fails
    (fake / "tee").chmod(0o755)
    up = subprocess.run(["/bin/sh", "-c", backup.UPLOAD], input=f"{tmp_path}/vm1.gz\n".encode() + data,
                        capture_output=True, cwd=tmp_path, check=False,
                        env={"PATH": f"{fake}:/usr/bin:/bin"})
    assert up.returncode == 0 and up.stdout.decode().splitlines()[0] == "ready"
    assert backup.parse_remote_sum(up.stdout.decode().splitlines()[1])[0] != hashlib.sha256(data).hexdigest()


def test_commit_removes_the_partial_file_unless_it_gets_the_checksum(tmp_path):
    for given in (b"", b"abort\n", b"0123\n"):  # pairvm died (no line), aborted, or garbled
        (tmp_path / "vm1.gz").write_text("old backup")
        (tmp_path / "vm1.gz.partial").write_text("half")
        commit = sh(backup.COMMIT, f"{tmp_path}/vm1.gz\n".encode() + given, tmp_path)
        assert commit.returncode == 0 and commit.stdout == b"aborted\n", commit
        assert sorted(p.name for p in tmp_path.iterdir()) == ["vm1.gz"]
    commit = sh(backup.COMMIT, f"{tmp_path}/vm2.gz\n{'0' * 64}\n".encode(), tmp_path)
    assert commit.returncode != 0 and not (tmp_path / "vm2.gz").exists()


def test_abort_removes_only_the_partial_file(tmp_path):
    (tmp_path / "vm1.gz").write_text("old backup")
    (tmp_path / "vm1.gz.partial").write_text("half")
    assert sh(backup.ABORT, f"{tmp_path}/vm1.gz\n".encode(), tmp_path).returncode == 0
    assert [p.name for p in tmp_path.iterdir()] == ["vm1.gz"]


def test_a_garbled_answer_from_the_backup_host_is_an_error():
    with pytest.raises(ValueError, match="unexpected answer"):
        backup.parse_remote_sum("sh: sha256sum: not found")
    with pytest.raises(ValueError, match="unexpected answer"):
        backup.parse_fetched("0123 12 - 1f 8b")


def view(*rows):
    return {"vms": [{"name": name, "running": running, "location": location}
                    for name, running, location in rows]}


def test_shares_give_each_vm_to_the_host_not_running_it_or_its_home():
    views = {
        "hostA": view(("run-a", True, "home"), ("run-b", False, "home"), ("idle-b", False, "away"),
                      ("both", True, "home"), ("only-a", False, "home")),
        "hostB": view(("run-a", False, "away"), ("run-b", True, "away"), ("idle-b", False, "home"),
                      ("both", True, "away")),
    }
    shares, problems = backup.shares(["hostA", "hostB"], views)
    assert shares == {"hostA": ["run-b"], "hostB": ["idle-b", "run-a"]}
    assert set(problems) == {"both", "only-a"}
    assert "runs on hostA and hostB" in problems["both"] and "only hostA knows it" in problems["only-a"]
    shares, problems = backup.shares(["hostA", "hostB"], views, ["run-a", "gone"])
    assert shares == {"hostA": [], "hostB": ["run-a"]} and "no host of the pair" in problems["gone"]


def test_several_vms_need_name_in_the_destination():
    backup.check_one_each("bk@h:/b/vm1.gz", ["vm1"])
    backup.check_one_each("bk@h:/b/_NAME.gz", "all")
    for names in ("all", ["vm1", "vm2"]):
        with pytest.raises(Invalid, match="must contain _NAME"):
            backup.check_one_each("bk@h:/b/one.gz", names)
    with pytest.raises(Invalid, match="backup.schedule.x: destination: .* must contain _NAME"):
        backup.settings({"schedule": {"x": {"destination": "bk@h:/b/one.gz", "cron": "0 3 * * *"}}})
