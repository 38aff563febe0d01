"""The master's registry of allocations and CLI-created VMs (docs/data-model.md).

One JSON file under the master's cachedir (``layout.registry_path``),
written only by the ``pairvm`` runner (``locked``: the whole read, change,
save under one lock; saved atomically) and read by the ``pairvm_registry``
ext_pillar and ``verify`` (``read``: a save is an atomic rename, so a reader
needs no lock).
"""

import contextlib
import copy
import fcntl
import json
import os

from pairvmlib import layout


def read(opts):
    """The registry as saved ({"vms": {}} before the first save)."""
    path = layout.registry_path(opts)
    if not os.path.exists(path):
        return {"vms": {}}
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


@contextlib.contextmanager
def locked(opts):
    """``box["registry"]``, locked for the whole block; saved (atomically) when changed."""
    path = layout.registry_path(opts)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        registry = read(opts)
        box = {"registry": registry}
        yield box
        if box["registry"] != registry:
            tmp = path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(box["registry"], fh, indent=2, sort_keys=True)
            os.rename(tmp, path)


def as_pillar(registry):
    """What the ext_pillar serves: pillar ``pairvm:allocations``, the CLI-created VMs, and
    the CDs recorded by ``pairvm.cdrom`` (``cdroms``: {vm: {"path", "pillar"}})."""
    vms = registry.get("vms", {})
    return {
        "pairvm": {
            "allocations": {name: entry["alloc"] for name, entry in vms.items()},
            "vms": {name: entry["definition"] for name, entry in vms.items() if entry.get("definition")},
            "cdroms": {name: entry["cdrom"] for name, entry in vms.items() if entry.get("cdrom")},
        }
    }


def with_cdrom(registry, name, path, pillar_cdrom):
    """A new registry in which VM ``name``'s CD is ``path`` (None: empty), recorded with the
    ``cdrom`` its definition had then (``pillar_cdrom``): a later change of that wins again
    (``schema.recorded_cdrom``)."""
    updated = copy.deepcopy(registry)
    updated["vms"][name]["cdrom"] = {"path": path, "pillar": pillar_cdrom}
    return updated
