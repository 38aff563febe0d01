"""Layer 2 on a host: the files pairvm keeps there, read and written one way.

``/machines/<vm>`` holds each VM's record (identical on both hosts,
``schema.dump_record``), ``/machines/_global`` this host's view of the pair
(JSON, written by the state ``pairvm.config`` from pillar: ``me``, ``peer``,
addresses, ``bridge``, ``volume_groups``, ``libvirt_uri``, the backup
settings, ...), so that a host keeps working while the master is down.
Standard library only: the host command imports it too.
"""

import json
import os

from pairvmlib import layout, names
from pairvmlib.errors import Failed


def no_vm(name):
    """What every operation says of a VM this host has no record (``/machines/<name>``) of."""
    return f"no VM {name} on this host"


def vm_names():
    """The VMs with a record on this host, sorted."""
    directory = layout.MACHINES_DIR
    if not os.path.isdir(directory):
        return []
    return sorted(entry for entry in os.listdir(directory)
                  if names.is_vm_name(entry) and os.path.isfile(os.path.join(directory, entry)))


def record_bytes(name):
    """The bytes of ``/machines/<name>``, or None when there is no such file."""
    try:
        with open(layout.machine_path(name), "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def read_global():
    """This host's view of the pair, ``/machines/_global`` ({} before the state wrote it)."""
    path = layout.global_path()
    try:
        with open(path, encoding="utf-8") as fh:
            view = json.load(fh)
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise Failed(f"{path} cannot be read ({exc}): re-apply the state pairvm.config") from exc
    if not isinstance(view, dict):
        raise Failed(f"{path} is not a mapping of settings: re-apply the state pairvm.config")
    return view


def read_text(path):
    """The text of ``path``, or None when it does not exist."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def write_atomic(path, text, mode=0o644):
    """Write a file under a temporary name, then rename it: readers see the old or the new."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.pairvm-tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    os.rename(tmp, path)


def put_back(path, previous, mode):
    """Put a file back as it was (``previous`` None: it did not exist)."""
    if previous is not None:
        write_atomic(path, previous, mode)
    elif os.path.exists(path):
        os.unlink(path)


def seed(name):
    """The seed ISO ``pairvm.image`` left for VM ``name``, or None."""
    path = layout.seed_path(name)
    return path if os.path.isfile(path) else None


def suppressed():
    """The VMs ``pairvm.suppress`` keeps from autostart on this host."""
    directory = layout.SUPPRESS_DIR
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []
