"""The master's registries, one per pair, and each pair's DRBD secret (docs/data-model.md).

A registry keeps a pair's allocations, its CLI-created VMs and the discs grown by the runner.

Each pair has a directory of its own under the master's cachedir
(``layout.pair_dir``, root only): ``registry.json`` (the pair as last
allocated, its VMs' allocations and the CLI-created definitions) and
``drbd-secret`` (the DRBD shared secret the master generated for the pair,
mode 0600). Only the ``pairvm`` runner writes them, every write under the
master's one registry lock (``locked``), because MACs and VM names are
unique across the master; a save is an atomic rename, so readers (the
``pairvm_registry`` ext_pillar, ``list``, ``verify``) need no lock.
"""

import contextlib
import copy
import fcntl
import json
import os
import secrets

from pairvmlib import defaults, layout, names
from pairvmlib.errors import Failed, Invalid

DEFAULT = defaults.SETTINGS["pair_name"]
SECRET_BYTES = 32  # token_urlsafe: 43 characters of [A-Za-z0-9_-]
PRIVATE = 0o700


def _checked(pair):
    if not names.is_pair_name(pair):
        raise Invalid(f"pair: must be {names.PAIR_NAME_RULE}, got {pair!r}")
    return pair


def _load(path):
    try:
        with open(path, encoding="utf-8") as fh:
            saved = json.load(fh)
    except (OSError, ValueError) as exc:
        raise Failed(f"cannot read the registry {path}: {exc}") from exc
    if not isinstance(saved, dict):
        raise Failed(f"cannot read the registry {path}: not a JSON object")
    return saved


def pair_names(opts):
    """The names of the pairs that have a registry, sorted."""
    base = os.path.join(layout.master_dir(opts), layout.PAIRS_DIR)
    found = set()
    if os.path.isdir(base):
        found = {name for name in os.listdir(base)
                 if names.is_pair_name(name) and os.path.exists(layout.registry_path(opts, name))}
    if os.path.exists(layout.legacy_registry_path(opts)):
        found.add(DEFAULT)
    return sorted(found)


def resolve(opts, pair=None):
    """``pair`` checked; without one, the master's only pair (``default`` when there is none)."""
    if pair is not None:
        return _checked(pair)
    known = pair_names(opts)
    if len(known) > 1:
        raise Failed(f"this master has {len(known)} pairs ({', '.join(known)}): name one with pair=NAME")
    return known[0] if known else DEFAULT


def _path(opts, pair):
    path = layout.registry_path(opts, pair)
    if pair == DEFAULT and not os.path.exists(path) and os.path.exists(layout.legacy_registry_path(opts)):
        return layout.legacy_registry_path(opts)
    return path


def exists(opts, pair):
    return os.path.exists(_path(opts, _checked(pair)))


def read(opts, pair=None):
    """Pair ``pair``'s registry as saved (``{"vms": {}}`` before its first save)."""
    path = _path(opts, resolve(opts, pair))
    if not os.path.exists(path):
        return {"vms": {}}
    return _load(path)


def pairs(opts):
    """{pair: registry} of every pair that has one."""
    return {name: read(opts, name) for name in pair_names(opts)}


def _write_private(path, text):
    """Write ``text`` to ``path`` atomically, mode 0600 from the start."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.rename(tmp, path)


def _private_dir(path):
    os.makedirs(path, PRIVATE, exist_ok=True)
    os.chmod(path, PRIVATE)


def _save(opts, pair, saved):
    for path in (layout.master_dir(opts), os.path.dirname(layout.pair_dir(opts, pair)),
                 layout.pair_dir(opts, pair)):
        _private_dir(path)
    _write_private(layout.registry_path(opts, pair), json.dumps(saved, indent=2, sort_keys=True))
    legacy = layout.legacy_registry_path(opts)
    if pair == DEFAULT and os.path.exists(legacy):
        os.rename(legacy, legacy + ".before-pairs")  # now pairs/default/registry.json


@contextlib.contextmanager
def locked(opts, pair=None):
    """Under the master's registry lock: ``box["registry"]``, pair ``pair``'s registry
    (saved atomically when changed), ``box["others"]`` ({pair: registry} of the other
    pairs, read only) and ``box["pair"]`` (the pair's name, resolved as ``resolve``)."""
    _private_dir(layout.master_dir(opts))
    with open(layout.registry_lock_path(opts), "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        pair = resolve(opts, pair)
        saved = read(opts, pair)
        box = {"registry": saved, "pair": pair,
               "others": {name: read(opts, name) for name in pair_names(opts) if name != pair}}
        yield box
        if box["registry"] != saved or _path(opts, pair) != layout.registry_path(opts, pair):
            _save(opts, pair, box["registry"])


def secret(opts, pair):
    """The DRBD shared secret the master keeps for pair ``pair``, or None."""
    try:
        with open(layout.secret_path(opts, _checked(pair)), encoding="utf-8") as fh:
            return fh.read().strip() or None
    except FileNotFoundError:
        return None


def ensure_secret(opts, pair):
    """Pair ``pair``'s secret, generated (random, mode 0600) when it has none yet.
    Call it inside ``locked``: the lock makes it once per pair."""
    found = secret(opts, pair)
    if found:
        return found
    _private_dir(layout.pair_dir(opts, pair))
    made = secrets.token_urlsafe(SECRET_BYTES)
    _write_private(layout.secret_path(opts, pair), made + "\n")
    return made


def as_pillar(saved, drbd_secret=None):
    """What the ext_pillar serves a host of the pair: pillar ``pairvm:allocations``, the
    CLI-created VMs, ``pairvm:resized`` (the disc size ``salt-run pairvm.resize`` gave a
    pillar-defined VM), the CDs recorded by ``pairvm.cdrom`` (``cdroms``: {vm: {"path",
    "pillar"}}), the homes ``salt-run pairvm.swap`` gave pillar-defined VMs (``homes``:
    {vm: minion}) and, when given, the generated secret as ``drbd_options:shared_secret``."""
    vms = saved.get("vms", {})
    pairvm = {
        "allocations": {name: entry["alloc"] for name, entry in vms.items()},
        "vms": {name: entry["definition"] for name, entry in vms.items() if entry.get("definition")},
        "resized": {name: entry["disc_mib"] for name, entry in vms.items() if entry.get("disc_mib")},
        "cdroms": {name: entry["cdrom"] for name, entry in vms.items() if entry.get("cdrom")},
        "homes": {name: entry["home"] for name, entry in vms.items() if entry.get("home")},
    }
    if drbd_secret:
        pairvm["drbd_options"] = {"shared_secret": drbd_secret}
    return {"pairvm": pairvm}


def record_disc(registry, name, disc_mib, pillar_mib):
    """A copy of ``registry`` that keeps VM ``name``'s disc at ``disc_mib`` MiB: in its
    definition for a VM created from the CLI, else as the entry's ``disc_mib`` while the
    pillar files give less (``pillar_mib``)."""
    updated = copy.deepcopy(registry)
    entry = _entry(updated, name)
    if entry.get("definition"):
        entry["definition"]["disc_mib"] = disc_mib
    elif disc_mib > pillar_mib:
        entry["disc_mib"] = disc_mib
    else:
        entry.pop("disc_mib", None)
    return updated


def with_cdrom(registry, name, path, pillar_cdrom):
    """A new registry in which VM ``name``'s CD is ``path`` (None: empty), recorded with the
    ``cdrom`` its definition had then (``pillar_cdrom``): a later change of that wins again
    (``schema.recorded_cdrom``)."""
    updated = copy.deepcopy(registry)
    updated["vms"][name]["cdrom"] = {"path": path, "pillar": pillar_cdrom}
    return updated


def _entry(updated, name):
    entry = updated.get("vms", {}).get(name)
    if entry is None:
        raise Failed(f"VM {name} has no entry in the registry: run salt-run pairvm.allocate")
    return entry


def with_swap(registry, name, to):
    """A new registry recording that a swap of VM ``name`` to home ``to`` has begun
    (``to`` None: that it has ended). Not served as pillar: the runner's own record, so
    that running it again finishes the same swap."""
    updated = copy.deepcopy(registry)
    entry = _entry(updated, name)
    if to is None:
        entry.pop("swap", None)
    else:
        entry["swap"] = {"to": to}
    return updated


def with_home(registry, name, home, pillar_home):
    """A new registry in which VM ``name``'s home is ``home``: in its definition for a VM
    created from the CLI, else as the entry's ``home`` while the pillar files give
    another (``pillar_home``), served as pillar ``pairvm:homes``."""
    updated = copy.deepcopy(registry)
    entry = _entry(updated, name)
    if entry.get("definition"):
        entry["definition"]["home"] = home
    elif home != pillar_home:
        entry["home"] = home
    else:
        entry.pop("home", None)
    return updated
