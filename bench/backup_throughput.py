"""Backup pipeline throughput: python -m bench.backup_throughput

Runs the product's own transfer code (``send`` of pairvmlib.transfer: pv,
pigz or zstd, the Python relay that hashes, ssh to the constant remote
scripts, checksum and rename) against a real sshd on 127.0.0.1 (root's
key in a temporary directory), on one data file that compresses about 3:1.

Prints, from one run on the same data:

* uncapped, for gzip and zstd: the pipeline's throughput divided by the
  throughput of its slowest stage measured alone (read = pv to /dev/null,
  compressor = pigz/zstd from the page cache to /dev/null, ssh = the
  compressed stream through ssh into a file there); target at least 0.8;
* for reference, the same tools piped together by the shell without the
  relay, checksum and rename, and pairvm's pipeline divided by that;
* capped: achieved rate divided by the requested rate for three limits,
  each run lasting at least 20 s; target 0.95 to 1.05.

On a 2-CPU machine the backup host's sshd shares the CPUs with the
compressor, and each backup opens two SSH connections (upload, then the
rename), about 0.3 s each here: the uncapped ratios measure that too.

Throughputs are in bytes of the disc (uncompressed) per second.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pairvmlib import backup, host, transfer

PORT = 2299
# full run, and --quick (the bench tier of ./scripts/test: it runs and prints, no target)
DATA_MIB, QUICK_DATA_MIB = 1024, 48
LIMITS_KIB = (1024, 8192, 32768)
CAPPED_SECONDS, QUICK_CAPPED_SECONDS = 23, 3


def make_data(path, mib):
    """Half random, half repeated text: about 3:1 with gzip, like a used disc."""
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


def start_sshd(tmp):
    for key in ("client", "hostkey"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / key)], check=True)
    (tmp / "authorized_keys").write_text((tmp / "client.pub").read_text())
    (tmp / "known_hosts").write_text(f"[127.0.0.1]:{PORT} {(tmp / 'hostkey.pub').read_text()}")
    (tmp / "sshd_config").write_text(
        f"Port {PORT}\nListenAddress 127.0.0.1\nHostKey {tmp / 'hostkey'}\n"
        f"AuthorizedKeysFile {tmp / 'authorized_keys'}\nPidFile none\nUsePAM no\nStrictModes no\n"
        "PasswordAuthentication no\nPermitRootLogin prohibit-password\nAllowUsers root\n")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(tmp / "sshd_config")],
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while subprocess.run(["sh", "-c", f"ss -ltn | grep -q '127.0.0.1:{PORT} '"], check=False).returncode:
        if time.monotonic() > deadline or sshd.poll() is not None:
            raise SystemExit("bench: sshd did not start")
        time.sleep(0.1)
    return sshd


class Product:
    """The product's backup transfer (pairvmlib.transfer) on a host whose progress events are
    kept in ``events`` as (time, bytes)."""

    def __init__(self, tmp):
        self.events = []
        salt = {"event.send": lambda tag, data: self.events.append((time.monotonic(), data["bytes"]))}
        self.host = host.Host(salt, {}, {}, {"id": "bench"})
        self.settings = {"key": str(tmp / "client"), "known_hosts": str(tmp / "known_hosts"), "port": PORT}


def timed(argv, **kwargs):
    start = time.monotonic()
    subprocess.run(argv, check=True, **kwargs)
    return time.monotonic() - start


def send(product, data, dest, speed, compress):
    """Disc bytes per second of one whole backup (connect, stream, checksum, rename)."""
    size = data.stat().st_size
    target = {"user": "root", "host": "127.0.0.1", "path": str(dest)}
    start = time.monotonic()
    transfer.send("bench", str(data), size, target, dict(product.settings, speed=speed, compress=compress),
                  lambda: None, product.host.reporter)
    return size / (time.monotonic() - start)


def stages_alone(settings, data, out, compress):
    """Throughput (disc bytes/s) of each stage on its own."""
    size = data.stat().st_size
    tool = backup.compressor(compress)["compress"]
    packed = out / f"alone.{compress}"
    subprocess.run(["cat", str(data)], stdout=subprocess.DEVNULL, check=True)  # page cache, as the pipeline
    read = size / timed(["pv", "-q", "-s", str(size), str(data)], stdout=subprocess.DEVNULL)
    with open(data, "rb") as src, open(packed, "wb") as dst:
        pack = size / timed(tool, stdin=src, stdout=dst)
    ssh = backup.ssh_argv({"user": "root", "host": "127.0.0.1"}, settings, "read")[:-1] + [
        f"cat > {out}/alone.remote"]
    with open(packed, "rb") as src:
        carry = size / timed(ssh, stdin=src)
    return {"read": read, compress: pack, "ssh": carry}


def shell_pipeline(settings, data, out, compress):
    """The same tools piped together with no relay, checksum or rename (a reference)."""
    size = data.stat().st_size
    tool = backup.compressor(compress)["compress"]
    ssh = backup.ssh_argv({"user": "root", "host": "127.0.0.1"}, settings, "read")[:-1] + [
        f"cat > {out}/shell.remote"]
    start = time.monotonic()
    with subprocess.Popen(["pv", "-q", str(data)], stdout=subprocess.PIPE) as reader, \
            subprocess.Popen(tool, stdin=reader.stdout, stdout=subprocess.PIPE) as packer:
        reader.stdout.close()
        subprocess.run(ssh, stdin=packer.stdout, check=True)
    return size / (time.monotonic() - start)


def mib(rate):
    return f"{rate / 2**20:8.1f} MiB/s"


def main(quick=False):
    data_mib, capped_seconds = (QUICK_DATA_MIB, QUICK_CAPPED_SECONDS) if quick else (DATA_MIB, CAPPED_SECONDS)
    tmp = Path(tempfile.mkdtemp(prefix="pvbench-", dir="/var/tmp"))
    os.chmod(tmp, 0o755)
    sshd = None
    try:
        data = tmp / "disc.img"
        make_data(data, data_mib)
        sshd = start_sshd(tmp)
        product = Product(tmp)
        settings = product.settings
        print(f"backup throughput{' (quick: too short for its targets)' if quick else ''}: {data_mib} MiB "
              f"of data (1/3 random), sshd on 127.0.0.1:{PORT}, {os.cpu_count()} CPUs")
        print("uncapped: pipeline / slowest stage alone (target >= 0.80)")
        for compress in ("gzip", "zstd"):
            alone = stages_alone(settings, data, tmp, compress)
            pipeline = send(product, data, tmp / f"uncapped.{compress}", 0, compress)
            plain = shell_pipeline(settings, data, tmp, compress)
            slowest = min(alone, key=alone.get)
            stages = ", ".join(f"{k} {mib(v).strip()}" for k, v in alone.items())
            print(f"  {compress:5} pipeline {mib(pipeline)}; alone: {stages}; "
                  f"ratio {pipeline / alone[slowest]:.2f} (slowest: {slowest})")
            print(f"        reference: the same tools piped by the shell (no relay, checksum or rename) "
                  f"{mib(plain).strip()}, ratio {plain / alone[slowest]:.2f}; pairvm / shell "
                  f"{pipeline / plain:.2f}")
        print(f"capped (gzip): achieved / requested, {capped_seconds} s each (target 0.95 to 1.05)")
        for limit in LIMITS_KIB:
            part = tmp / f"capped-{limit}.img"
            cycle(data, part, limit * 1024 * capped_seconds)
            product.events.clear()
            whole = send(product, part, tmp / f"capped-{limit}.gz", limit, "gzip")
            # pv's counts once a second (the last event is the final one after the rename)
            (t0, b0), (t1, b1) = product.events[0], product.events[-2]
            reading = (b1 - b0) / (t1 - t0)
            print(f"  {limit:6} KiB/s: read at {reading / 1024:9.1f} KiB/s over {t1 - t0:5.1f} s, "
                  f"ratio {reading / (limit * 1024):.3f}; whole backup incl. connect and rename "
                  f"{whole / 1024:9.1f} KiB/s, ratio {whole / (limit * 1024):.3f}")
            part.unlink()
    finally:
        if sshd:
            sshd.terminate()
            sshd.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(quick="--quick" in sys.argv[1:]))
