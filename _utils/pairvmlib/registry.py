"""The master's registry of allocations, CLI-created VMs and grown discs (docs/data-model.md).

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
from pairvmlib.errors import Failed


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
    """What the ext_pillar serves: pillar ``pairvm:allocations``, the CLI-created VMs and
    ``pairvm:resized`` (the disc size ``salt-run pairvm.resize`` gave a pillar-defined VM)."""
    vms = registry.get("vms", {})
    return {
        "pairvm": {
            "allocations": {name: entry["alloc"] for name, entry in vms.items()},
            "vms": {name: entry["definition"] for name, entry in vms.items() if entry.get("definition")},
            "resized": {name: entry["disc_mib"] for name, entry in vms.items() if entry.get("disc_mib")},
        }
    }


def record_disc(registry, name, disc_mib, pillar_mib):
    """A copy of ``registry`` that keeps VM ``name``'s disc at ``disc_mib`` MiB: in its
    definition for a VM created from the CLI, else as the entry's ``disc_mib`` while the
    pillar files give less (``pillar_mib``)."""
    updated = copy.deepcopy(registry)
    entry = updated.get("vms", {}).get(name)
    if entry is None:
        raise Failed(f"VM {name} has no entry in the registry: run salt-run pairvm.allocate")
    if entry.get("definition"):
        entry["definition"]["disc_mib"] = disc_mib
    elif disc_mib > pillar_mib:
        entry["disc_mib"] = disc_mib
    else:
        entry.pop("disc_mib", None)
    return updated
