"""The tests' sshd, written once: its keys, its sshd_config, the daemon started
inside a host (a lab host, a kernel-lab host, or this machine) and stopped.

Used by the lab hosts' own sshd (``hosts.LabHost.start_sshd``), the backup
hosts of tests/integration/test_backup.py, test_session.py and
tests/kernel/test_data_paths.py, and bench/backup_throughput.py.

A ``host`` is anything with ``argv(argv)`` (the argv that runs ``argv``
inside it) and ``run(argv, check=...)``, as ``LabHost`` and the kernel lab's
hosts have; ``LOCAL`` is this machine.
"""

import subprocess
import time

# Every test sshd: no PAM, no passwords, keys only; StrictModes would refuse its
# files under /tmp or /var/tmp (world-writable parents).
COMMON = ("PidFile none", "UsePAM no", "StrictModes no", "PasswordAuthentication no",
          "KbdInteractiveAuthentication no")


class Local:
    """This machine as a ``host``."""

    @staticmethod
    def argv(argv):
        return list(argv)

    @staticmethod
    def run(argv, check=True):
        return subprocess.run(argv, capture_output=True, text=True, check=check)


LOCAL = Local()


def write_config(path, listen, host_key, port=22, extra=()):
    """sshd_config at ``path``: ``listen``:``port``, ``host_key``, COMMON and the ``extra`` lines."""
    lines = (f"Port {port}", f"ListenAddress {listen}", f"HostKey {host_key}", *COMMON, *extra)
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def keygen(path):
    """An ed25519 key pair without passphrase: ``path`` and ``path``.pub."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


def prepare(directory, port, users, listen="127.0.0.1", extra=()):
    """A backup host's sshd in ``directory`` (made afresh, 0755: sshd reads
    authorized_keys as the user): keys ``client`` and ``hostkey`` (ed25519, no
    passphrase), ``authorized_keys`` holding the client's, and ``sshd_config``
    allowing ``users`` only; returns the config's path."""
    subprocess.run(["rm", "-rf", str(directory)], check=True)
    directory.mkdir(mode=0o755, parents=True)
    for key in ("client", "hostkey"):
        keygen(directory / key)
    (directory / "authorized_keys").write_text((directory / "client.pub").read_text())
    return write_config(directory / "sshd_config", listen, directory / "hostkey", port,
                        (f"AuthorizedKeysFile {directory / 'authorized_keys'}",
                         f"AllowUsers {' '.join(users)}", *extra))


def known_hosts(directory, port, *names):
    """known_hosts lines for ``directory``'s host key under each of ``names`` at ``port``."""
    key = (directory / "hostkey.pub").read_text()
    return "".join(f"[{name}]:{port} {key}" for name in names)


def start(host, config, log, listen, port=22, timeout=15):
    """``sshd -D -f config -E log`` inside ``host`` (its own session); returns its Popen
    once it listens on ``listen``:``port``. Raises when something listens there already,
    or when the daemon does not listen within ``timeout`` s (it is stopped)."""
    listening = ["sh", "-c", f"ss -Hltn | grep -q ' {listen}:{port} '"]
    if host.run(listening, check=False).returncode == 0:
        raise RuntimeError(f"sshd ({config}): {listen}:{port} is in use already")
    host.run(["mkdir", "-p", "-m", "0755", "/run/sshd"])
    daemon = subprocess.Popen(host.argv(["/usr/sbin/sshd", "-D", "-f", str(config), "-E", str(log)]),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    while host.run(listening, check=False).returncode:
        if time.monotonic() > deadline or daemon.poll() is not None:
            stop(daemon)
            raise RuntimeError(f"sshd ({config}) did not listen on {listen}:{port}; see {log}")
        time.sleep(0.1)
    return daemon


def stop(*daemons):
    """Stop ``daemons`` run in the foreground (sshd -D, or libvirtd, ...): SIGTERM, then
    SIGKILL after 10 s; reap them."""
    for daemon in daemons:
        daemon.terminate()
        try:
            daemon.wait(timeout=10)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
