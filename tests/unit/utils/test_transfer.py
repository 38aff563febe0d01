"""pairvmlib.transfer's process plumbing with real local processes (no ssh: the transfers
to a real sshd run in tests/integration/test_backup.py and bench/backup_throughput.py)."""

import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest

from pairvmlib import transfer
from pairvmlib.errors import Failed

REPO_UTILS = os.path.join(os.path.dirname(__file__), "..", "..", "..", "_utils")


def test_tee_hashed_passes_the_stream_on_and_hashes_it(tmp_path):
    data = os.urandom(3 << 20)
    (tmp_path / "in").write_bytes(data)
    pipe = transfer.Pipeline()
    with open(tmp_path / "in", "rb") as source, open(tmp_path / "out", "wb") as sink:
        _tee, hasher = transfer.tee_hashed(pipe, source, sink)
    try:
        assert transfer.digest_of(hasher) == hashlib.sha256(data).hexdigest()
        pipe.wait()
    finally:
        pipe.close()
    assert (tmp_path / "out").read_bytes() == data and pipe.failure() is None


def test_count_reads_reports_what_a_stage_has_read_so_far():
    pipe, seen = transfer.Pipeline(), []
    source, feed = os.pipe()
    try:
        tee = pipe.start("copying", ["tee"], stdin=source, stdout=subprocess.DEVNULL)
        os.close(source)
        pipe.count_reads(tee, seen.append)
        os.write(feed, b"x" * 100000)
        time.sleep(1.5)  # one report comes after a second
        assert seen and 100000 <= seen[-1] < 100000 + 65536, seen  # rchar: also the loader's few reads
        os.close(feed)
        pipe.wait()
    finally:
        pipe.close()
    assert pipe.failure() is None


def test_failure_blames_the_stage_that_failed_not_those_that_lost_their_reader():
    pipe = transfer.Pipeline()
    try:
        writer = pipe.start("writing", ["sh", "-c", "while :; do echo data; done"], stdout=subprocess.PIPE)
        reader = pipe.start("reading", ["sh", "-c", "head -c 10 >/dev/null; echo it broke >&2; exit 3"],
                            stdin=writer.stdout, stdout=subprocess.DEVNULL)
        writer.stdout.close()
        pipe.collect_stderr(writer, "writing")
        pipe.collect_stderr(reader, "reading")
        pipe.wait()
        assert writer.returncode == -signal.SIGPIPE
        assert pipe.failure() == "sh (reading) failed with rc 3: it broke"
    finally:
        pipe.close()


def test_failure_names_the_stages_asked_first_and_how_they_ended():
    pipe = transfer.Pipeline()
    try:
        early = pipe.start("early", ["sh", "-c", "exit 1"])
        late = pipe.start("late", ["sh", "-c", "kill -9 $$"])
        for proc, what in ((early, "early"), (late, "late")):
            pipe.collect_stderr(proc, what)
        pipe.wait()
        assert pipe.failure() == "sh (early) failed with rc 1"
        assert pipe.failure(first=("late",)) == "sh (late) was killed by signal 9"
    finally:
        pipe.close()


def test_a_killed_pairvm_leaves_no_stage_running(tmp_path):
    """SIGKILL (kill_job, OOM) cannot be cleaned up after: the stages must die with pairvm."""
    script = (f"import sys; sys.path.insert(0, {REPO_UTILS!r}); from pairvmlib import transfer; "
              "p = transfer.Pipeline().start('waiting', ['sleep', '300'], stdout=subprocess.PIPE); "
              "print(p.pid, flush=True); time.sleep(300)")
    parent = subprocess.Popen([sys.executable, "-c", f"import subprocess, time; {script}"],
                              stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())

    def state():
        """sleep's state letter (Z: dead, not yet reaped by init), or None when it is gone."""
        try:
            with open(f"/proc/{child}/stat") as stat:
                fields = stat.read().split()
        except FileNotFoundError:
            return None
        return fields[2] if fields[1] == "(sleep)" else "starting"

    deadline = time.monotonic() + 10
    while state() == "starting" and time.monotonic() < deadline:  # setpriv has not yet exec'd sleep
        time.sleep(0.02)
    assert state() in ("S", "R")  # the positive control: it runs while pairvm does
    parent.kill()
    parent.wait()
    while state() in ("S", "R") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert state() in (None, "Z")


def test_a_connection_refused_before_the_path_is_written_is_a_refusal(tmp_path, monkeypatch):
    """ssh that is gone before pairvm writes the target path (a refused connection ends at
    once): the refusal with ssh's reason, not a BrokenPipeError."""
    key = tmp_path / "key"
    key.write_text("not used\n")
    refused = ["sh", "-c", "echo 'ssh: connect to host h port 22: Connection refused' >&2; exit 255"]
    monkeypatch.setattr(transfer.backup, "ssh_argv", lambda *args, **kwargs: refused)
    collect = transfer.Pipeline.collect_stderr

    def collect_once_ended(self, proc, *args, **kwargs):
        proc.wait()  # the race, made certain: ssh has ended before the write
        return collect(self, proc, *args, **kwargs)

    monkeypatch.setattr(transfer.Pipeline, "collect_stderr", collect_once_ended)
    dest = {"user": "root", "host": "h", "path": "/srv/backup/vm1.gz"}
    with pytest.raises(Failed, match=r"cannot back up to root@h:/srv/backup/vm1.gz: ssh: connect to host h "
                                     r"port 22: Connection refused; nothing was changed"):
        with transfer.Upload(dest, {"key": str(key)}):
            pass
