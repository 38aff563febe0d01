"""Backup, restore and verify throughput: python -m bench.backup_throughput [--quick]

Runs the product's own transfer code (``pairvmlib.transfer``: ``Upload``
for a backup, ``Fetch`` for restore and verify_backup) against a real sshd
on 127.0.0.1 (root's key in a temporary directory), on one data file that
compresses about 3:1, and compares each with its REFERENCE: the same tools
doing the same work, piped by the shell, with the same data and sshd (the
only fair limit on one machine, where the backup host's sshd shares the
CPUs). Reference and product run in pairs, in alternating order
(reference first, then pairvm first: ABBA...), so that neither side
always runs after the other or in the same phase of the machine's other
load; each pair gives a ratio, and the MEDIAN of those ratios is the
case's figure (one noisy round cannot decide it). A case runs at least
PAIRS pairs and goes on, up to MAX_PAIRS, until it has run for CASE_SECONDS
(the short cases, restore and verify, get more pairs). Every pair's
figures and the spread of the ratios are printed.

Prints, from one run:

* uncapped backup, gzip and zstd: pairvm / reference (target at least 0.95);
* restore and verify_backup, gzip and zstd: pairvm / reference (at least 0.95);
* capped backup (gzip): the achieved read rate / the requested rate for
  three limits, each run lasting at least 20 s (target 0.95 to 1.05);
* fail fast: how long a backup takes to refuse a closed port, a missing
  key, a key the host refuses, an unknown host key and an unwritable
  directory (target under 2 s each), before any snapshot would be taken;
* last line: the ratios against the references (medians).

Throughputs are in bytes of the disc (uncompressed) per second.
"""

import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

from pairvmlib import backup, host, transfer
from pairvmlib.errors import Failed
from tests.lab import sshd

# full run, and --quick (the bench tier of ./scripts/test: it runs and prints, no target)
DATA_MIB, QUICK_DATA_MIB = 1024, 96
# pairs per case (even: as many with each side first), at least, and until a case has run
# CASE_SECONDS, at most MAX_PAIRS
PAIRS, QUICK_PAIRS, MAX_PAIRS = 6, 2, 16
CASE_SECONDS, QUICK_CASE_SECONDS = 120, 0
LIMITS_KIB = (1024, 8192, 32768)
CAPPED_SECONDS, QUICK_CAPPED_SECONDS = 23, 3

# The references, defined once: what the bench runs (bash) and prints.
TOOLS = {"gzip": {"compress": "pigz", "decompress": "pigz -dc"},
         "zstd": {"compress": "zstd -T0 -3", "decompress": "zstd -dc"}}
REFERENCE = {
    "backup": "pv -q {disc} | {compress} | tee >(openssl dgst -sha256 >{local}) "
              "| {ssh} 'tee {file} | openssl dgst -sha256'",
    "restore": "{ssh} 'openssl dgst -sha256 {file} >&2 && cat {file}' "
               "| tee >(openssl dgst -sha256 >{local}) | {decompress} >{disc}.restored",
    "verify": "{ssh} 'cat {file}' | tee >(openssl dgst -sha256 >{local}) | {decompress} >/dev/null",
}


def make_data(path, mib):
    """One third random, the rest repeated text: about 3:1 with gzip, like a used disc."""
    text = b"".join(b"%08d pairvm backup benchmark line of a log file or a config\n" % i
                    for i in range(16384))[: 2**20]
    with open(path, "wb") as fh:
        for i in range(mib):
            fh.write(os.urandom(2**20) if i % 3 == 0 else text)


def cycle(data, part, size):
    """``part``: ``size`` bytes of ``data`` repeated."""
    chunk = data.read_bytes()
    with open(part, "wb") as dst:
        while size > 0:
            dst.write(chunk[:size])
            size -= len(chunk)


def free_ports(count):
    """``count`` TCP ports of 127.0.0.1 that nothing listens on (the kernel's choice, so that
    two runs of the bench at once do not meet)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def start_sshd(tmp, port):
    """sshd on 127.0.0.1:``port`` for root with the key ``tmp/sshd/client``; a second key,
    ``tmp/stranger``, that it refuses; known_hosts in ``tmp``."""
    conf = sshd.prepare(tmp / "sshd", port, ("root",), extra=("PermitRootLogin prohibit-password",))
    sshd.keygen(tmp / "stranger")
    (tmp / "known_hosts").write_text(sshd.known_hosts(tmp / "sshd", port, "127.0.0.1"))
    try:
        return sshd.start(sshd.LOCAL, conf, tmp / "sshd" / "sshd.log", "127.0.0.1", port, timeout=10)
    except RuntimeError as exc:
        raise SystemExit(f"bench: {exc}") from exc


class Bench:
    """The product's transfers on a host whose progress events are kept in ``events``
    as (time, bytes), and the shell references, on one data file and one sshd."""

    def __init__(self, tmp, data, port, closed_port):
        self.tmp, self.data, self.size = tmp, data, data.stat().st_size
        self.closed_port = closed_port
        self.events = []
        salt = {"event.send": lambda tag, data: self.events.append((time.monotonic(), data["bytes"]))}
        self.host = host.Host(salt, {}, {}, {"id": "bench"})
        self.settings = {"key": str(tmp / "sshd" / "client"), "known_hosts": str(tmp / "known_hosts"),
                         "port": port, "speed": 0, "compress": "gzip"}

    def dest(self, name):
        return {"user": "root", "host": "127.0.0.1", "path": str(self.tmp / name)}

    def reference(self, operation, compress, name):
        """Disc bytes/s of the shell reference of ``operation`` (bash)."""
        ssh = backup.ssh_argv(self.dest(name), self.settings, "abort")[:-1]
        command = REFERENCE[operation].format(
            disc=self.data, file=self.tmp / name, local=self.tmp / "reference.sha256",
            ssh=shlex.join(ssh), **TOOLS[compress])
        start = time.monotonic()
        subprocess.run(["bash", "-c", command], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        return self.size / (time.monotonic() - start)

    def backup(self, compress, name, speed=0, data=None):
        """Disc bytes/s of one whole backup (connect, check, stream, both sha256, rename)."""
        data = data or self.data
        size = data.stat().st_size
        start = time.monotonic()
        with transfer.Upload(self.dest(name), dict(self.settings, speed=speed, compress=compress)) as upload:
            upload.send("bench", str(data), size, lambda: None, self.host.reporter)
        return size / (time.monotonic() - start)

    def fetch(self, operation, name):
        """Disc bytes/s of restore (into a file) or verify_backup of the backup ``name``."""
        check = operation == "restore"
        start = time.monotonic()
        with transfer.Fetch(self.dest(name), self.settings, check=check) as fetch:
            if check:
                with open(f"{self.data}.restored", "wb") as sink:
                    got = fetch.receive(operation, "bench", sink.fileno(), self.host.reporter)
            else:
                got = fetch.receive(operation, "bench", subprocess.DEVNULL, self.host.reporter)
        if got != fetch.stored:
            raise SystemExit(f"bench: {operation} of {name}: sha256 {got}, stored {fetch.stored}")
        return self.size / (time.monotonic() - start)

    def refusal(self, dest, **settings):
        """Seconds until a backup to ``dest`` is refused, and why."""
        start = time.monotonic()
        try:
            with transfer.Upload(dest, dict(self.settings, **settings)):
                pass
        except Failed as exc:
            return time.monotonic() - start, str(exc)
        raise SystemExit(f"bench: a backup to {dest} was not refused")


def mib(rate):
    return f"{rate / 2**20:6.1f} MiB/s"


def compare(label, pace, reference, product):
    """Pairs of reference and product in ABBA order, as ``pace`` (least pairs, seconds)
    says; prints each pair and the spread, returns the median of the pairs' product / reference."""
    pairs, seconds = pace
    ref, ours = [], []
    start = time.monotonic()
    while len(ref) < pairs or (time.monotonic() - start < seconds and len(ref) < MAX_PAIRS):
        ref.append(reference())
        ours.append(product())
        ours.append(product())
        ref.append(reference())
    ratios = [o / r for o, r in zip(ours, ref, strict=True)]
    ratio = median(ratios)
    print(f"  {label:14} pairvm {mib(median(ours))}, reference {mib(median(ref))} (medians): "
          f"ratio {ratio:.3f} (median; {min(ratios):.3f} to {max(ratios):.3f})")
    print(f"  {'':14} per pair (MiB/s, pairvm/reference, *: pairvm first): " + ", ".join(
        f"{'*' if i % 2 else ''}{o / 2**20:.0f}/{r / 2**20:.0f}={o / r:.2f}"
        for i, (o, r) in enumerate(zip(ours, ref, strict=True))))
    return ratio


def uncapped(bench, pace):
    """Backup, restore and verify_backup against their references; {label: ratio}."""
    ratios = {}
    print(f"uncapped: pairvm / reference, the median of at least {pace[0]} pairs and {pace[1]} s per case "
          "(target >= 0.95); the references (bash):")
    for operation, command in REFERENCE.items():
        print(f"  {operation:8} {command}")
    print("  with " + "; ".join(f"{c}: {t['compress']}, {t['decompress']}" for c, t in TOOLS.items())
          + "; {ssh}: the product's ssh argv")
    for compress in ("gzip", "zstd"):
        ratios[f"backup {compress}"] = compare(
            f"backup {compress}", pace, lambda c=compress: bench.reference("backup", c, "reference.out"),
            lambda c=compress: bench.backup(c, f"pairvm.{c}"))
    for compress in ("gzip", "zstd"):
        for operation in ("restore", "verify"):
            ratios[f"{operation} {compress}"] = compare(
                f"{operation} {compress}", pace,
                lambda o=operation, c=compress: bench.reference(o, c, f"pairvm.{c}"),
                lambda o=operation, c=compress: bench.fetch(o, f"pairvm.{c}"))
    return ratios


def capped(bench, seconds):
    print(f"capped (gzip): achieved / requested, {seconds} s each (target 0.95 to 1.05)")
    for limit in LIMITS_KIB:
        part = bench.tmp / f"capped-{limit}.img"
        cycle(bench.data, part, limit * 1024 * seconds)
        bench.events.clear()
        whole = bench.backup("gzip", f"capped-{limit}.gz", speed=limit, data=part)
        # pv's counts once a second (the last event is the final one after the rename)
        (t0, b0), (t1, b1) = bench.events[0], bench.events[-2]
        reading = (b1 - b0) / (t1 - t0)
        print(f"  {limit:6} KiB/s: read at {reading / 1024:9.1f} KiB/s over {t1 - t0:5.1f} s, "
              f"ratio {reading / (limit * 1024):.3f}; whole backup incl. connect and rename "
              f"{whole / 1024:9.1f} KiB/s, ratio {whole / (limit * 1024):.3f}")
        part.unlink()


def fail_fast(bench):
    print("fail fast: a backup refused before its snapshot (target < 2 s each)")
    cases = {
        "closed port": (bench.dest("x.gz"), {"port": bench.closed_port}),
        "missing key": (bench.dest("x.gz"), {"key": str(bench.tmp / "no-such-key")}),
        "key refused": (bench.dest("x.gz"), {"key": str(bench.tmp / "stranger")}),
        "unknown host key": (bench.dest("x.gz"), {"known_hosts": os.devnull}),
        "unwritable dir": (dict(bench.dest("x.gz"), path="/sys/pairvm-bench/x.gz"), {}),
    }
    slowest = 0
    for label, (dest, settings) in cases.items():
        seconds, why = bench.refusal(dest, **settings)
        slowest = max(slowest, seconds)
        print(f"  {label:16} {seconds:5.2f} s: {why[:150]}")
    return slowest


def main(quick=False):
    data_mib, capped_seconds = (QUICK_DATA_MIB, QUICK_CAPPED_SECONDS) if quick else (DATA_MIB, CAPPED_SECONDS)
    pace = (QUICK_PAIRS, QUICK_CASE_SECONDS) if quick else (PAIRS, CASE_SECONDS)
    tmp = Path(tempfile.mkdtemp(prefix="pvbench-", dir="/var/tmp"))
    os.chmod(tmp, 0o755)
    daemon = None
    try:
        data = tmp / "disc.img"
        make_data(data, data_mib)
        port, closed_port = free_ports(2)
        daemon = start_sshd(tmp, port)
        bench = Bench(tmp, data, port, closed_port)
        print(f"backup throughput{' (quick: too short for its targets)' if quick else ''}: {data_mib} MiB "
              f"of data (1/3 random), sshd on 127.0.0.1:{port}, {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.2f}")
        ratios = uncapped(bench, pace)
        capped(bench, capped_seconds)
        slowest = fail_fast(bench)
        print(f"load average at the end: {os.getloadavg()[0]:.2f} (1 min), {os.getloadavg()[1]:.2f} (5 min)")
        print("pairvm / reference: " + ", ".join(f"{label} {ratio:.2f}" for label, ratio in ratios.items())
              + f"; slowest refusal {slowest:.2f} s")
    finally:
        if daemon:
            sshd.stop(daemon)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(quick="--quick" in sys.argv[1:]))
