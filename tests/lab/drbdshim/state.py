"""Shared state of the DRBD shim: one JSON file per resource, under a lock.

``$PVLAB_DATA/drbd/`` is seen by both lab hosts: it is the replication wire.
``<res>.json`` holds what the two kernels would know (per host: minor,
backing disk, role, disk state, net config, connection state, and the
UUIDs cached from the on-disk meta data); ``<res>.lock`` serialises every
state change (flock); ``<res>.link-down`` present = replication link cut.
"""

import contextlib
import fcntl
import json
import os
import time

# drbd_conns, drbd_disk_state, drbd_role names (drbd_strings.c)
CONN_ORDER = ["StandAlone", "Disconnecting", "Unconnected", "Timeout", "BrokenPipe",
              "NetworkFailure", "ProtocolError", "TearDown", "WFConnection",
              "WFReportParams", "Connected", "StartingSyncS", "StartingSyncT",
              "WFBitMapS", "WFBitMapT", "WFSyncUUID", "SyncSource", "SyncTarget",
              "VerifyS", "VerifyT", "PausedSyncS", "PausedSyncT", "Ahead", "Behind"]
DISK_ORDER = ["Diskless", "Attaching", "Failed", "Negotiating", "Inconsistent",
              "Outdated", "DUnknown", "Consistent", "UpToDate"]


def conn_rank(name):
    return CONN_ORDER.index(name)


def disk_rank(name):
    return DISK_ORDER.index(name)


def data_dir():
    """The lab's shim state: PVLAB_DATA in the lab hosts; in a test process, the directory
    of its lab instance (tests/lab/instance.py)."""
    default = "/var/tmp/pvlab" + os.environ.get("PVLAB_INSTANCE", "")
    return os.path.join(os.environ.get("PVLAB_DATA", default), "drbd")


def hostname():
    return os.uname().nodename


def new_host():
    return {
        "minor": None, "volume": None, "mntns": None,
        "disk": "Diskless", "backing": None, "backing_rdev": None, "backing_sect": 0,
        "meta": None, "loop": None, "map": None, "size": 0,
        "role": "Secondary", "net": None, "conn": "StandAlone",
        "res_opts": {}, "disk_opts": {}, "uuids": [0, 0, 0, 0], "flags": 0,
        "discard_my_data": False, "split_mark": None, "changed": False,
    }


def new_resource(name):
    return {"name": name, "hosts": {}, "link": "down", "sync": None, "log": []}


def _path(name, ext):
    return os.path.join(data_dir(), f"{name}.{ext}")


def link_is_cut(name):
    return os.path.exists(_path(name, "link-down"))


def set_link(name, up):
    """Lab helper: cut (up=False) or restore (up=True) the replication link."""
    os.makedirs(data_dir(), exist_ok=True)
    flag = _path(name, "link-down")
    if up:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(flag)
    else:
        with open(flag, "w", encoding="utf-8") as fh:
            fh.write(f"{time.time()}\n")


def all_names():
    try:
        files = os.listdir(data_dir())
    except FileNotFoundError:
        return []
    return sorted(f[:-5] for f in files if f.endswith(".json"))


@contextlib.contextmanager
def locked(name):
    """Yield the resource's state dict (None if unknown); written back on exit."""
    os.makedirs(data_dir(), exist_ok=True)
    with open(_path(name, "lock"), "a+", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            path = _path(name, "json")
            try:
                with open(path, encoding="utf-8") as fh:
                    st = json.load(fh)
            except FileNotFoundError:
                st = None
            box = {"state": st}
            yield box
            st = box["state"]
            if st is None or not st["hosts"]:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            else:
                tmp = f"{path}.{os.getpid()}"
                # root only: it holds what the kernel holds, the peers' shared secret too
                with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w",
                               encoding="utf-8") as fh:
                    json.dump(st, fh, indent=1, sort_keys=True)
                os.replace(tmp, path)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
