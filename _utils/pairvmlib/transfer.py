"""Backup transfers: the pipeline of processes and the talk with the backup host.

No byte of a backup passes through Python: the stages are processes joined
by pipes, as a shell would join them.

* ``Upload`` (a backup): one ssh connection whose own session runs the
  constant UPLOAD script and which carries the COMMIT session beside it.
  Opening it checks the key, the host and the directory before the
  snapshot is taken; ``send`` then runs ``pv | compressor | tee >(sha256)
  | ssh`` and has COMMIT rename the file only when both sides' sha256 agree.
* ``Fetch`` (restore, verify_backup): one ssh session that sends a stored
  backup's checksum, size and first bytes, then the backup, into
  ``tee >(sha256) | decompressor`` (progress: what tee has read).

Every command is an argv list; failures raise ``Failed`` naming the stage.
"""

import contextlib
import contextvars
import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import threading

from pairvmlib import backup
from pairvmlib.errors import Failed

PIPE_BYTES = 1 << 20
SENDING = "sending to the backup host"
COMMITTING = "renaming on the backup host"
RECEIVING = "reading from the backup host"


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
    """Processes of one transfer; ``close`` kills what still runs; ``failure``
    names the stage that failed first in words."""

    def __init__(self):
        self.procs, self.errors, self.threads = [], {}, []
        self.done = threading.Event()

    def start(self, what, argv, **kwargs):
        try:
            proc = subprocess.Popen(backup.WITH_PAIRVM + argv, stderr=subprocess.PIPE,  # pylint: disable=consider-using-with
                                    **kwargs)
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

        self.background(read)

    def background(self, func):
        """Run ``func`` in a thread that ``wait`` and ``close`` join."""
        # Salt's dunders live in a context variable: the thread gets a copy.
        thread = threading.Thread(target=contextvars.copy_context().run, args=(func,), daemon=True)
        thread.start()
        self.threads.append(thread)

    def count_reads(self, proc, report):
        """Report, once a second until the stages end, how many bytes ``proc`` has read
        (``rchar`` of /proc/PID/io): a stream's progress with no process copying it."""

        def watch():
            while not self.done.wait(1):
                try:
                    with open(f"/proc/{proc.pid}/io", encoding="ascii") as io:
                        report(int(io.readline().split()[1]))  # rchar: N
                except (OSError, ValueError, IndexError):
                    return

        self.background(watch)

    def said(self, what):
        return "; ".join(line for line in self.errors.get(what, []) if line)[-400:]

    def wait(self):
        for _what, _tool, proc in self.procs:
            proc.wait()
        self.done.set()
        for thread in self.threads:
            thread.join(timeout=10)

    def failure(self, first=()):
        """'ssh (sending to the backup host) failed with rc 255: ...' or None. A stage
        that only lost its reader (SIGPIPE, "Broken pipe") is not the cause; the
        stages named in ``first`` are blamed before the others."""
        failed = [(what, tool, proc) for what, tool, proc in self.procs
                  if proc.returncode and proc.returncode != -signal.SIGPIPE
                  and not self.said(what).endswith("Broken pipe")]
        failed.sort(key=lambda stage: stage[0] not in first)
        if not failed:
            return None
        what, tool, proc = failed[0]
        rc, said = proc.returncode, self.said(what)
        how = f"was killed by signal {-rc}" if rc < 0 else f"failed with rc {rc}"
        return f"{tool} ({what}) {how}" + (f": {said}" if said else "")

    def close(self):
        for _what, _tool, proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self.done.set()
        for thread in self.threads:
            thread.join(timeout=10)
        for _what, _tool, proc in self.procs:
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream:
                    with contextlib.suppress(OSError):  # unflushed data to a dead process
                        stream.close()


def widen_pipe(fd):
    """1 MiB instead of 64 KiB: fewer context switches between the stages."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)


def tee_hashed(pipe, source, sink):
    """``tee`` from ``source`` into ``sink`` and into ``openssl dgst``; returns both
    processes (the hasher's stdout: the digest)."""
    hash_in, tee_out = os.pipe()
    try:
        widen_pipe(tee_out)
        tee = pipe.start("copying", ["tee", f"/dev/fd/{tee_out}"], stdin=source, stdout=sink,
                         pass_fds=(tee_out,))
        hasher = pipe.start("sha256", backup.HASH, stdin=hash_in, stdout=subprocess.PIPE)
    finally:
        os.close(hash_in)
        os.close(tee_out)
    pipe.collect_stderr(tee, "copying")
    pipe.collect_stderr(hasher, "sha256")
    return tee, hasher


def digest_of(hasher):
    return hasher.stdout.read().decode().split(" ")[0].strip()


def remote(dest, settings, script, *lines, timeout=120):
    """Run one constant script on the backup host over a new connection; ``lines``
    (the path first) on its stdin."""
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


def check_key(settings):
    """The SSH key must be readable here (ssh would only warn, then fail to log in)."""
    if not os.access(settings["key"], os.R_OK):
        raise Failed(f"the backup SSH key {settings['key']} (pairvm:backup:key) is missing or unreadable "
                     f"on this host; nothing was changed")


class Upload:
    """One backup's connection to the backup host (a context manager).

    Entering it logs in and runs UPLOAD as the connection's own session (its
    control master), which creates PATH.partial and answers ``ready``: an
    unreachable host, a refused key or an unwritable directory fail here,
    before any snapshot, with ssh's or the shell's reason. COMMIT then runs
    beside it through the same connection, waiting for the checksum.
    Leaving without a commit has COMMIT remove PATH.partial (a new
    connection does when this one was lost); COMMIT also does when pairvm
    dies, since its input ends.
    """

    def __init__(self, dest, settings):
        self.dest, self.settings = dest, settings
        self.link, self.pipe = Pipeline(), Pipeline()  # ssh; the local stages
        self.upload = self.commit = self.data = self.socket_dir = self.answer = None
        self.ready = False

    def __enter__(self):
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def _open(self):
        check_key(self.settings)
        line = f"{self.dest['path']}\n".encode()
        self.socket_dir = tempfile.mkdtemp(prefix="pairvm-ssh-")
        socket = os.path.join(self.socket_dir, "c")
        source, self.data = os.pipe()
        try:
            widen_pipe(self.data)
            self.upload = self.link.start(SENDING, backup.ssh_argv(self.dest, self.settings, "upload",
                                                                   control=socket, master=True),
                                          stdin=source, stdout=subprocess.PIPE)
        finally:
            os.close(source)
        self.link.collect_stderr(self.upload, SENDING)
        with contextlib.suppress(BrokenPipeError):  # ssh ended already (e.g. refused): its reason follows
            os.write(self.data, line)
        if self.upload.stdout.readline() != b"ready\n":
            self.link.wait()
            raise Failed(f"cannot back up to {dest_text(self.dest)}: "
                         f"{self.link.said(SENDING) or f'ssh ended with rc {self.upload.returncode}'}; "
                         f"nothing was changed (checked before the snapshot)")
        self.ready = True
        self.commit = self.link.start(COMMITTING, backup.ssh_argv(self.dest, self.settings, "commit",
                                                                  control=socket),
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.link.collect_stderr(self.commit, COMMITTING)
        self.commit.stdin.write(line)
        self.commit.stdin.flush()

    def send(self, name, device, size, before_commit, reporter):
        """Read ``size`` bytes of ``device`` (pv, rate-limited), compress, send;
        compare both sides' sha256, call ``before_commit`` (it raises to refuse),
        then commit (the rename there)."""
        report = reporter("backup", name, size)

        def pv_line(text):
            if not text.isdigit():
                return False
            report(int(text))
            return True

        pipe, compress = self.pipe, self.settings["compress"]
        reader = pipe.start("reading the snapshot", backup.reader_argv(device, size, self.settings["speed"]),
                            stdout=subprocess.PIPE)
        packer = pipe.start(f"{compress} compression", backup.compressor(compress)["compress"],
                            stdin=reader.stdout, stdout=subprocess.PIPE)
        _tee, hasher = tee_hashed(pipe, packer.stdout, self.data)
        for stream in (reader.stdout, packer.stdout):
            stream.close()
        os.close(self.data)
        self.data = None
        pipe.collect_stderr(reader, "reading the snapshot", pv_line)
        pipe.collect_stderr(packer, f"{compress} compression")
        sent = digest_of(hasher)
        answer = self.upload.stdout.read().decode(errors="replace")  # its session's end
        pipe.wait()
        failed = pipe.failure()
        try:
            stored, size_there = backup.parse_remote_sum(answer)
        except ValueError:
            failed = failed or "no answer"
        if failed:
            self._decide("abort")  # the connection ends with its sessions: ssh's rc and message
            raise Failed(f"backup of {name} to {dest_text(self.dest)} failed: "
                         f"{self.link.failure(first=(SENDING,)) or failed}")
        if stored != sent:
            raise Failed(f"backup of {name}: the backup host stored {size_there} bytes with sha256 {stored}, "
                         f"the stream sent had sha256 {sent}; nothing was renamed"
                         + (f" ({self.link.said(SENDING)})" if self.link.said(SENDING) else ""))
        before_commit()
        if self._decide(sent) != "committed":
            raise Failed(f"the rename on the backup host failed: "
                         f"{self.link.failure(first=(COMMITTING,)) or 'no answer'}")
        figures = report(size, final=True)
        return {"bytes": size, "sent": size_there, "sha256": sent,
                "seconds": figures["elapsed"], "rate": figures["rate"]}

    def _decide(self, word):
        """Tell COMMIT ``word`` once (a checksum: commit; else abort) and let the
        connection end; COMMIT's answer, or None."""
        if self.commit is not None and not self.commit.stdin.closed:
            try:
                self.commit.stdin.write(f"{word}\n".encode())
                self.commit.stdin.close()
                answer = self.commit.stdout.readline().decode(errors="replace").strip()
                for proc in (self.commit, self.upload):
                    proc.wait(timeout=60)
                if self.commit.returncode == 0:
                    self.answer = answer
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
            self.link.close()  # the connection has ended (or is ended): ssh's rc and messages
        return self.answer

    def close(self):
        if self.data is not None:
            os.close(self.data)  # the upload's stream ends, cut short
            self.data = None
        self.pipe.close()
        if self.ready and self._decide("abort") not in ("aborted", "committed"):
            with contextlib.suppress(Failed):  # the connection was lost: a new one
                remote(self.dest, self.settings, "abort", self.dest["path"], timeout=30)
        self.link.close()
        if self.socket_dir:
            shutil.rmtree(self.socket_dir, ignore_errors=True)


class Fetch:
    """A stored backup coming from the backup host (a context manager): entering it
    reads FETCH's first line (``stored``, ``size``, ``compression``; with ``check``
    the backup host first hashes the file and refuses a damaged one)."""

    def __init__(self, src, settings, check):
        self.src, self.settings, self.check = src, settings, check
        self.pipe = Pipeline()

    def __enter__(self):
        try:
            self._open()
        except BaseException:
            self.pipe.close()
            raise
        return self

    def __exit__(self, *exc):
        self.pipe.close()

    def _open(self):
        where = dest_text(self.src)
        check_key(self.settings)
        self.ssh = self.pipe.start(RECEIVING, backup.ssh_argv(self.src, self.settings, "fetch"),
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.pipe.collect_stderr(self.ssh, RECEIVING)
        self.ssh.stdin.write(f"{self.src['path']}\n{'check' if self.check else 'stat'}\n".encode())
        self.ssh.stdin.close()
        head = b""
        while not head.endswith(b"\n"):  # byte by byte: what follows is the file, read by pv
            byte = os.read(self.ssh.stdout.fileno(), 1)
            if not byte:
                self.ssh.wait()
                self.pipe.wait()
                raise Failed(f"{where}: {self.pipe.failure() or 'the backup host sent nothing'}")
            head += byte
        try:
            self.header = backup.parse_fetched(head.decode(errors="replace"))
        except ValueError as exc:
            raise Failed(f"{where}: {exc}") from exc
        self.stored, self.size = self.header["stored"], self.header["size"]
        if self.check and self.header["actual"] != self.stored:
            raise Failed(f"{where} is damaged: its sha256 is {self.header['actual']}, "
                         f"{self.src['path']}.sha256 says {self.stored}")
        self.compression = self.header["compression"]
        if self.compression is None:
            raise Failed(f"{where} is neither gzip nor zstd data")

    def receive(self, operation, name, sink, reporter):
        """Stream the backup through its decompressor into ``sink`` (a file
        descriptor, or DEVNULL to test it); return the sha256 of what came."""
        report = reporter(operation, name, self.size)
        pipe, where, kind = self.pipe, dest_text(self.src), self.compression
        unpack_in, tee_out = os.pipe()
        try:
            widen_pipe(tee_out)
            tee, hasher = tee_hashed(pipe, self.ssh.stdout, tee_out)
            unpack = pipe.start(f"{kind} decompression", backup.compressor(kind)["decompress"],
                                stdin=unpack_in, stdout=sink)
        finally:
            os.close(unpack_in)
            os.close(tee_out)
        self.ssh.stdout.close()
        pipe.collect_stderr(unpack, f"{kind} decompression")
        pipe.count_reads(tee, report)
        got = digest_of(hasher)
        pipe.wait()
        failed = pipe.failure(first=(f"{kind} decompression",))
        if failed and "decompression" in failed.split(")")[0]:
            raise Failed(f"{where} is damaged: {failed}")
        if failed:
            raise Failed(f"{operation} of {where} failed: {failed}")
        report(self.size, final=True)
        return got
