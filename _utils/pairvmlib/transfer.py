"""Backup transfers: the pipeline of processes and the talk with the backup host.

``send`` streams a snapshot through pv, a compressor and ssh to the backup
host; ``receive`` streams a stored backup back through its decompressor;
``remote`` runs one of the constant scripts of ``pairvmlib.backup`` there.
Every command is an argv list; failures raise ``Failed`` naming the stage.
"""

import contextlib
import contextvars
import fcntl
import hashlib
import signal
import subprocess
import threading

from pairvmlib import backup
from pairvmlib.errors import Failed

PIPE_BYTES = 1 << 20


@contextlib.contextmanager
def sigterm_interrupts():
    """Under salt-call, SIGTERM would end the process without clean-up: make it
    raise, so the snapshot and the partial file are removed. (A minion's job
    process already turns SIGTERM into SystemExit.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupted(signum, frame):
        raise Failed(f"interrupted by signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Pipeline:
    """Processes of one transfer; ``close`` kills what still runs and reports
    the first failed stage in words."""

    def __init__(self):
        self.procs, self.errors, self.threads, self.stopped = [], {}, [], set()

    def start(self, what, argv, **kwargs):
        try:
            proc = subprocess.Popen(argv, stderr=subprocess.PIPE, **kwargs)  # pylint: disable=consider-using-with
        except OSError as exc:
            raise Failed(f"cannot run {argv[0]} ({what}): {exc.strerror}") from exc
        self.procs.append((what, argv[0], proc))
        return proc

    def collect_stderr(self, proc, what, on_line=None):
        """Read a process's stderr in a thread (a full pipe would stall it)."""
        lines = []
        self.errors[what] = lines

        def read():
            for raw in proc.stderr:
                text = raw.decode(errors="replace").rstrip()
                if on_line is None or not on_line(text):
                    lines.append(text)

        # Salt's dunders live in a context variable: the thread gets a copy.
        thread = threading.Thread(target=contextvars.copy_context().run, args=(read,), daemon=True)
        thread.start()
        self.threads.append(thread)

    def stop(self):
        """A stage ended early: stop the others (they would wait on a pipe forever)."""
        for _what, _tool, proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                self.stopped.add(proc)

    def wait(self):
        for _what, _tool, proc in self.procs:
            proc.wait()
        for thread in self.threads:
            thread.join(timeout=10)

    def failure(self):
        """(stage, 'ssh (sending to the backup host) failed with rc 255: ...') or None."""
        for what, tool, proc in self.procs:
            rc = proc.returncode
            if rc and proc not in self.stopped:
                said = "; ".join(line for line in self.errors.get(what, []) if line)[-400:]
                how = f"was killed by signal {-rc}" if rc < 0 else f"failed with rc {rc}"
                return what, f"{tool} ({what}) {how}" + (f": {said}" if said else "")
        return None

    def close(self):
        for _what, _tool, proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream:
                    with contextlib.suppress(OSError):  # unflushed data to a dead process
                        stream.close()


def widen_pipe(stream):
    """1 MiB instead of 64 KiB: fewer context switches between the stages."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)


def remote(dest, settings, script, *lines, timeout=120):
    """Run one constant script on the backup host; ``lines`` (the path first) on its stdin."""
    argv = backup.ssh_argv(dest, settings, script)
    try:
        proc = subprocess.run(argv, input="".join(f"{line}\n" for line in lines), capture_output=True,
                              text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise Failed(f"ssh to {dest['host']} did not answer within {timeout} s") from exc
    if proc.returncode:
        said = proc.stderr.strip().splitlines()
        raise Failed(
            f"ssh {dest['user']}@{dest['host']} failed with rc {proc.returncode}: "
            f"{said[-1] if said else 'no message'}"
        )
    return proc.stdout


def dest_text(dest):
    return f"{dest['user']}@{dest['host']}:{dest['path']}"


def send(name, device, size, dest, settings, before_commit, reporter):
    """Read ``size`` bytes of ``device`` (pv, rate-limited), compress, send over
    ssh to ``dest``'s temporary name, compare checksums, call ``before_commit``
    (it raises to refuse), then rename there."""
    pipe, committed = Pipeline(), False
    report = reporter("backup", name, size)

    def pv_line(text):
        if not text.isdigit():
            return False
        report(int(text))
        return True

    try:
        reader = pipe.start("reading the snapshot", backup.reader_argv(device, size, settings["speed"]),
                            stdout=subprocess.PIPE)
        packer = pipe.start(f"{settings['compress']} compression",
                            backup.compressor(settings["compress"])["compress"],
                            stdin=reader.stdout, stdout=subprocess.PIPE)
        reader.stdout.close()
        sender = pipe.start("sending to the backup host", backup.ssh_argv(dest, settings, "upload"),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        for stream in (packer.stdout, sender.stdin):
            widen_pipe(stream)
        pipe.collect_stderr(reader, "reading the snapshot", pv_line)
        pipe.collect_stderr(packer, f"{settings['compress']} compression")
        pipe.collect_stderr(sender, "sending to the backup host")
        digest, sent = hashlib.sha256(), 0
        try:
            sender.stdin.write(f"{dest['path']}\n".encode())
            while chunk := packer.stdout.read1(1 << 20):
                digest.update(chunk)
                sender.stdin.write(chunk)
                sent += len(chunk)
            sender.stdin.close()
        except BrokenPipeError:
            pipe.stop()  # ssh ended early: its rc and message say why, below
        answer = sender.stdout.read().decode(errors="replace")
        pipe.wait()
        failed = pipe.failure()
        if failed:
            raise Failed(f"backup of {name} to {dest_text(dest)} failed: {failed[1]}")
        remote_sum, remote_size = backup.parse_remote_sum(answer)[:2]
        if (remote_sum, remote_size) != (digest.hexdigest(), sent):
            raise Failed(
                f"backup of {name}: the backup host received {remote_size} bytes (sha256 {remote_sum}), "
                f"{sent} were sent (sha256 {digest.hexdigest()}); nothing was renamed"
            )
        before_commit()
        remote(dest, settings, "commit", dest["path"], digest.hexdigest())
        committed = True
    finally:
        pipe.close()
        if not committed:
            with contextlib.suppress(Failed):
                remote(dest, settings, "abort", dest["path"], timeout=30)
    figures = report(size, final=True)
    return {"bytes": size, "sent": sent, "sha256": digest.hexdigest(),
            "seconds": figures["elapsed"], "rate": figures["rate"]}


def receive(operation, name, src, settings, total, sink, reporter):
    """Stream ``src`` from the backup host through its decompressor into ``sink``
    (a file descriptor, or DEVNULL to test it); return the sha256 of what came."""
    pipe, digest, got = Pipeline(), hashlib.sha256(), 0
    report = reporter(operation, name, total)
    try:
        fetch = pipe.start("reading from the backup host", backup.ssh_argv(src, settings, "read"),
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        fetch.stdin.write(f"{src['path']}\n".encode())
        fetch.stdin.close()
        pipe.collect_stderr(fetch, "reading from the backup host")
        head = fetch.stdout.read1(1 << 20)
        kind = backup.detect_compression(head)
        if kind is None:
            raise Failed(f"{dest_text(src)} is neither gzip nor zstd data")
        unpack = pipe.start(f"{kind} decompression", backup.compressor(kind)["decompress"],
                            stdin=subprocess.PIPE, stdout=sink)
        pipe.collect_stderr(unpack, f"{kind} decompression")
        chunk = head
        try:
            while chunk:
                digest.update(chunk)
                unpack.stdin.write(chunk)
                got += len(chunk)
                report(got)
                chunk = fetch.stdout.read1(1 << 20)
            unpack.stdin.close()
        except BrokenPipeError:
            pipe.stop()  # the decompressor ended early: its rc and message say why, below
        pipe.wait()
        failed = pipe.failure()
        if failed and failed[0].endswith("decompression"):
            raise Failed(f"{dest_text(src)} is damaged: {failed[1]}")
        if failed:
            raise Failed(f"{operation} of {dest_text(src)} failed: {failed[1]}")
    finally:
        pipe.close()
    report(got, final=True)
    return digest.hexdigest(), kind


def stored_backup(source, name, settings, check):
    """(source dict, stored sha256, size) of a backup; ``check`` also has the backup
    host hash the file and refuses one that does not match its .sha256."""
    src = backup.parse_destination(source, name)
    answer = remote(src, settings, "check" if check else "stat", src["path"], timeout=3600)
    try:
        stored, size, *actual = backup.parse_remote_sum(answer)
    except ValueError as exc:
        raise Failed(f"{dest_text(src)}: {exc}") from exc
    if check and actual[0] != stored:
        raise Failed(
            f"{dest_text(src)} is damaged: its sha256 is {actual[0]}, {src['path']}.sha256 says {stored}"
        )
    return src, stored, size
