"""Network, mount and UTS namespaces of the lab hosts, and running commands in them.

A host's namespaces outlive the process that made them: the network namespace
is an ``ip netns`` (``/run/netns/pvlab-<host>``), the mount and UTS namespaces
are bind-mounted onto files under ``/run/pvlab/ns`` (names of the lab
instance, see instance.py) (a private mount, as
``unshare --mount=FILE`` requires). ``nsenter`` joins all three.
"""

import ctypes
import os
import subprocess
import time
from pathlib import Path

from tests.lab import instance

NS_DIR = Path("/run") / instance.name("pvlab") / "ns"
NETNS_PREFIX = instance.name("pvlab") + "-"
CONTROL = "ctl"
CLONE_NEWNET = 0x40000000


def netns_name(host):
    """The ``ip netns`` name of a lab host (or of the control namespace)."""
    return NETNS_PREFIX + host


def netns_path(host):
    return Path("/run/netns") / netns_name(host)


def sh(argv, check=True, **kwargs):
    """Run argv in the current namespaces, capturing text output."""
    kwargs.setdefault("capture_output", True)
    result = subprocess.run(argv, text=True, check=False, **kwargs)
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed (rc {result.returncode}): {result.stderr.strip()}"
        )
    return result


def nsenter_argv(host, mount=True):
    """The argv prefix that runs a command inside a lab host's namespaces."""
    argv = ["nsenter", f"--net={netns_path(host)}"]
    if mount:
        argv += [f"--mount={NS_DIR / (host + '.mnt')}", f"--uts={NS_DIR / (host + '.uts')}"]
    return argv


def _prepare_ns_dir():
    NS_DIR.mkdir(parents=True, exist_ok=True)
    mounts = Path("/proc/self/mountinfo").read_text()
    if f" {NS_DIR} " not in mounts:
        sh(["mount", "--bind", str(NS_DIR), str(NS_DIR)])
        sh(["mount", "--make-private", str(NS_DIR)])


def create_netns(name):
    """Create ``ip netns`` NAME with loopback up (idempotent)."""
    if not netns_path(name).exists():
        sh(["ip", "netns", "add", netns_name(name)])
    sh(["ip", "-n", netns_name(name), "link", "set", "lo", "up"])


def create_host_namespaces(host, setup_script):
    """Create the host's network, mount and UTS namespaces.

    ``setup_script`` runs once inside the new namespaces (as ``sh -c``) to set
    the hostname and lay out the private mounts; the namespaces persist after.
    """
    _prepare_ns_dir()
    create_netns(host)
    for kind in ("mnt", "uts"):
        (NS_DIR / f"{host}.{kind}").touch()
    sh(
        [
            "nsenter", f"--net={netns_path(host)}",
            "unshare", f"--mount={NS_DIR / (host + '.mnt')}",
            f"--uts={NS_DIR / (host + '.uts')}", "--propagation", "private",
            "sh", "-euc", setup_script,
        ]
    )


def delete_host_namespaces(host):
    """Kill every process left in the host's network namespace, then remove it."""
    kill_netns_processes(host)
    for kind in ("mnt", "uts"):
        path = NS_DIR / f"{host}.{kind}"
        if path.exists():
            sh(["umount", str(path)], check=False)
            path.unlink(missing_ok=True)
    if netns_path(host).exists():
        sh(["ip", "netns", "delete", netns_name(host)], check=False)


def end_holder(holder, timeout=10):
    """End a process that holds namespaces open by waiting on its stdin: close
    its stdin, wait for it, kill it if it does not go."""
    if holder.poll() is not None:
        return
    holder.stdin.close()
    try:
        holder.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        holder.kill()
        holder.wait()


def netns_pids(name):
    if not netns_path(name).exists():
        return []
    out = sh(["ip", "netns", "pids", netns_name(name)], check=False).stdout
    return [int(pid) for pid in out.split() if int(pid) != os.getpid()]


def kill_netns_processes(name, timeout=10):
    """SIGKILL every process inside a lab network namespace and wait until
    they are gone (a dying process still pins its mount namespace)."""
    pids = netns_pids(name)
    for pid in pids:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.05)


def _alive(pid):
    """True while pid exists and is not a zombie (PID 1 here never reaps them)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def lab_netns_names():
    """Names (without prefix) of every lab network namespace that exists now."""
    netns_dir = Path("/run/netns")
    if not netns_dir.is_dir():
        return []
    return sorted(
        p.name[len(NETNS_PREFIX):] for p in netns_dir.iterdir() if p.name.startswith(NETNS_PREFIX)
    )


def any_lab_netns():
    """The network namespaces of every lab instance that exist now (full names)."""
    netns_dir = Path("/run/netns")
    if not netns_dir.is_dir():
        return []
    return sorted(p.name for p in netns_dir.iterdir() if instance.ANY_NETNS.match(p.name))


def enter_netns(name):
    """Move the calling thread into a lab network namespace.

    Used by the test process before it starts the salt-master, the log server
    and the event listener, so they bind to the lab's own addresses. Only the
    calling thread (and the threads and children it starts later) move.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(netns_path(name), os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({netns_path(name)}): {os.strerror(err)}")
    finally:
        os.close(fd)
