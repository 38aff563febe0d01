"""The backup state file: each VM's last backup made from this host, for the metrics.

``pairvm.backup`` records every attempt (``recorded`` wraps the backup of
one VM); ``pairvm.metrics`` reads the file. JSON at ``path()``:
``{vm: {"result": true|false, "started", "ended", "duration", "size",
"last_success", "error"}}`` (times Unix seconds, size in bytes of disc
read). Written atomically under a lock: backups of several VMs may end at
the same time.
"""

import fcntl
import functools
import json
import logging
import os
import time

from pairvmlib import layout, machines

log = logging.getLogger(__name__)
FILE = "backup-state.json"


def path():
    return os.path.join(layout.STATE_DIR, FILE)


def read():
    """``{vm: state}``; ``{}`` when no backup was recorded (or the file is unreadable)."""
    try:
        data = json.loads(machines.read_text(path()) or "{}")
    except ValueError:
        log.warning("pairvm: %s is not JSON; backup figures are missing until the next backup", path())
        return {}
    return data if isinstance(data, dict) else {}


def record(vm, ok, started, ended, size=None, error=None):
    """Record one attempt of ``vm``'s backup (a success keeps its time as ``last_success``)."""
    os.makedirs(layout.STATE_DIR, exist_ok=True)
    with open(f"{path()}.lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = read()
        previous = state.get(vm) if isinstance(state.get(vm), dict) else {}
        state[vm] = {
            "result": ok, "started": round(started, 3), "ended": round(ended, 3),
            "duration": round(ended - started, 3),
            "size": size if ok else previous.get("size"),
            "last_success": round(ended, 3) if ok else previous.get("last_success"),
            "error": None if ok else error,
        }
        machines.write_atomic(path(), json.dumps(state, sort_keys=True, indent=1) + "\n")


def recorded(backup_one):
    """Wrap the backup of one VM, ``backup_one(host, record, destination, settings,
    on_running_host, test)``: record its success (with the bytes read) or failure. A dry
    run, and a refusal that carries ``why`` (the VM is not backed up on this host), are
    not attempts. Recording never fails the backup."""

    @functools.wraps(backup_one)
    def wrapper(host, record_, destination, settings, on_running_host, test):
        if test:
            return backup_one(host, record_, destination, settings, on_running_host, test)
        started = time.time()
        outcome = {"ok": False, "error": None, "size": None}
        try:
            result = backup_one(host, record_, destination, settings, on_running_host, test)
            outcome.update(ok=True, size=result.get("bytes"))
            return result
        except Exception as exc:
            if getattr(exc, "why", None):
                outcome = None
            else:
                outcome["error"] = str(exc)
            raise
        finally:
            if outcome is not None:
                try:
                    record(record_["name"], outcome["ok"], started, time.time(), outcome["size"],
                           outcome["error"])
                except OSError as exc:
                    log.error("pairvm: backup of %s not recorded in %s: %s", record_["name"], path(), exc)

    return wrapper
