"""Machine-wide locks of the test labs: their paths and names are fixed, so
one run of each lab at a time; a second run waits."""

import fcntl
import os
import sys
from pathlib import Path

_held = {}


def hold(path, label):
    """Take the lock file ``path`` (waiting, and saying so, while another run
    holds it); it is kept until this process exits."""
    path = Path(path)
    if path in _held:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"{label}: another run holds {path}; waiting for it", file=sys.stderr, flush=True)
        fcntl.flock(fd, fcntl.LOCK_EX)
    _held[path] = fd


def share(path):
    """Hold ``path`` shared (waiting while someone holds it exclusively), kept until exit:
    a lab that uses something all labs share says so."""
    fcntl.flock(_held_fd(path), fcntl.LOCK_SH)


def alone(path):
    """True when no other process holds ``path``: this process then holds it exclusively
    until ``share`` or exit. A shared hold of this process is converted, and may be lost
    when it cannot be (flock): call ``share`` after."""
    try:
        fcntl.flock(_held_fd(path), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _held_fd(path):
    """This process's descriptor of ``path`` (opened once: flock converts a hold on the
    same descriptor, while a second descriptor would conflict with it)."""
    path = Path(path)
    if path not in _held:
        path.parent.mkdir(parents=True, exist_ok=True)
        _held[path] = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    return _held[path]
