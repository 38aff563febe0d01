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
    digest = hashlib.sha256(data).hexdigest()
    assert backup.parse_remote_sum(up.stdout.decode()) == (digest, len(data))
    assert not list(tmp_path.rglob("pwned*"))
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [f"{HOSTILE.split('/')[-1]}.partial"]

    assert sh(backup.COMMIT, f"{dest}\n{digest}\n".encode(), tmp_path).returncode == 0
    final = tmp_path / f"sub{HOSTILE}"
    assert final.read_bytes() == data
    assert (final.parent / (final.name + ".sha256")).read_text() == f"{digest}  {final.name}\n"
    stat = sh(backup.STAT, f"{dest}\n".encode(), tmp_path).stdout.decode()
    check = sh(backup.CHECK, f"{dest}\n".encode(), tmp_path).stdout.decode()
    assert backup.parse_remote_sum(stat) == (digest, len(data))
    assert backup.parse_remote_sum(check) == (digest, len(data), digest)
    assert sh(backup.READ, f"{dest}\n".encode(), tmp_path).stdout == data
    assert not list(tmp_path.rglob("pwned*"))


def test_upload_fails_when_the_file_cannot_be_made_and_commit_without_upload_fails(tmp_path):
    (tmp_path / "vm1.gz.partial").mkdir()
    up = sh(backup.UPLOAD, f"{tmp_path}/vm1.gz\n".encode() + b"data", tmp_path)
    assert up.returncode != 0 and b"Is a directory" in up.stderr and up.stdout == b""
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
