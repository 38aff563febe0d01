"""The kernel lab's command channel: run an argv inside a storage guest.

Stdlib only: the forwarders (``tests/kernel/bin/<command>``, first on the
PATH of a kernel-lab host) import it under ``/usr/bin/python3 -I``.

Each guest's ``/init`` serves one virtio-serial port, reached from here as
the unix socket ``$PVKERNEL_DATA/<host>/cmd.sock``. A request is one line,
``RUN <id> <base64 of a sh script>``; the answer is ``OUT <id>``, base64 of
stdout, ``ERR <id>``, base64 of stderr, ``END <id> <exit code>``. One
request at a time per guest (flock on ``cmd.lock``).
"""

import base64
import fcntl
import os
import secrets
import shlex
import socket
import sys

DATA = os.environ.get("PVKERNEL_DATA", "/var/tmp/pvkernel")


class ChannelError(RuntimeError):
    """The guest did not answer (not booted, gone, or too slow)."""


def host_dir(host):
    return os.path.join(DATA, host)


def _exchange(host, script, timeout):
    ident = secrets.token_hex(6)
    request = f"RUN {ident} {base64.b64encode(script.encode()).decode()}\n".encode()
    with open(os.path.join(host_dir(host), "cmd.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(os.path.join(host_dir(host), "cmd.sock"))
            sock.sendall(request)
            return _answer(sock.makefile("rb"), ident)
        except OSError as exc:  # socket.timeout is an OSError
            raise ChannelError(f"storage guest {host}: no answer ({exc})") from exc
        finally:
            sock.close()


def _answer(reader, ident):
    parts = {"OUT": [], "ERR": []}
    current = None
    for raw in reader:
        line = raw.decode("ascii", "replace").strip()
        words = line.split()
        if len(words) >= 2 and words[1] == ident and words[0] in parts:
            current = parts[words[0]]
        elif len(words) == 3 and words[:2] == ["END", ident]:
            return (int(words[2]), base64.b64decode("".join(parts["OUT"])),
                    base64.b64decode("".join(parts["ERR"])))
        elif current is not None:
            current.append(line)
    raise ChannelError(f"storage guest: the answer to request {ident} ended early")


def run_script(host, script, timeout=120):
    """(rc, stdout bytes, stderr bytes) of a sh script run in the guest of ``host``."""
    return _exchange(host, script, timeout)


def run(host, argv, timeout=120):
    """(rc, stdout bytes, stderr bytes) of argv run in the guest of ``host``."""
    return run_script(host, "exec " + " ".join(shlex.quote(a) for a in argv) + "\n", timeout)


def forward(command, args):
    """What a forwarder does: run ``command args`` in this host's guest
    (the host is ``uname -n``: the kernel-lab host's UTS namespace) and
    hand back stdout, stderr and the exit code unchanged."""
    try:
        rc, out, err = run(os.uname().nodename, [command, *args])
    except ChannelError as exc:
        sys.stderr.write(f"pvkernel forwarder: {command}: {exc}\n")
        return 127
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    sys.stderr.buffer.write(err)
    sys.stderr.flush()
    return rc
