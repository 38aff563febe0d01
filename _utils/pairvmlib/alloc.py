"""The master's allocator of per-VM IP, MAC, DRBD port and minor, VNC display.

Pure logic (no I/O) on the registry of docs/data-model.md (``{"vms": {name:
{"definition": ..., "alloc": {...}}}}``), for the pairvm runner. Settings and
definitions are the normalized ones of ``schema``. An allocation is given once and
never changes until the VM is released; every function returns a new
registry and leaves its arguments untouched.
"""

import copy
import ipaddress

from pairvmlib import checks
from pairvmlib.errors import Invalid
from pairvmlib.schema import ALLOC_KEYS

# Values a VM definition may fix; the DRBD minor is always allocated.
FIXABLE_KEYS = ("ip", "mac", "drbd_port", "vnc_display")
RANGE_SETTINGS = {
    "drbd_port": ("drbd", "port_range", "DRBD port"),
    "drbd_minor": ("drbd", "minor_range", "DRBD minor"),
    "vnc_display": ("vnc", "display_range", "VNC display"),
}
MAC_SUFFIXES = range(1, 2**24)


def _norm(key, value):
    """The comparable form of a value: MACs are case-insensitive, IPs canonical."""
    if key == "mac" and isinstance(value, str):
        return value.lower()
    if key == "ip" and isinstance(value, str):
        try:
            return str(ipaddress.IPv4Address(value))
        except ValueError:
            return value
    return value


def _entries(registry, errors):
    """{name: entry} copied from a registry, each entry with ``definition`` and an ``alloc`` dict."""
    registry = {} if registry is None else registry
    vms = registry.get("vms") if isinstance(registry, dict) else None
    if not isinstance(registry, dict) or not isinstance(vms, dict | None):
        errors.append(f"registry: must be {{'vms': {{name: {{'definition', 'alloc'}}}}}}, got {registry!r}")
        return {}
    entries = {}
    for name, entry in (vms or {}).items():
        if not isinstance(entry, dict) or not isinstance(entry.get("alloc") or {}, dict):
            errors.append(f"vm {name!r}: registry entry: must be {{'definition', 'alloc'}}, got {entry!r}")
            continue
        entry = copy.deepcopy(entry)
        entry.setdefault("definition", None)
        entry["alloc"] = {k: v for k, v in (entry.get("alloc") or {}).items() if v is not None}
        entries[name] = entry
    return entries


def _registry(registry, entries):
    """A new registry: the other top-level keys of ``registry`` kept, the entries sorted by name."""
    rest = {k: copy.deepcopy(v) for k, v in (registry or {}).items() if k != "vms"}
    return {**rest, "vms": {name: entries[name] for name in sorted(entries)}}


# --- what each resource may hold ------------------------------------------------------------


def _ip_why_not(value, pool):
    if pool is None:
        return "cannot be used: no pool (pool.cidr) is configured"
    try:
        addr = ipaddress.IPv4Address(value)
    except ValueError:
        return "is not an IPv4 address"
    net = ipaddress.IPv4Network(pool["cidr"])
    offset = int(addr) - int(net.network_address)
    if addr not in net:
        return f"is outside the pool {pool['cidr']}"
    if addr in (net.network_address, net.broadcast_address):
        return f"is the network or broadcast address of {pool['cidr']}"
    if str(addr) == pool["gateway"]:
        return "is the gateway"
    if offset <= pool["reserve_first"]:
        return f"is one of the first {pool['reserve_first']} host addresses (pool.reserve_first)"
    if str(addr) in pool["reserved"]:
        return "is reserved (pool.reserved)"
    return None


def _mac_why_not(value):
    try:
        octets = [int(part, 16) for part in value.split(":")]
    except ValueError:
        return "is not a MAC address"
    if len(octets) != 6 or any(not 0 <= o <= 255 for o in octets):
        return "is not a MAC address"
    return "is a multicast address" if octets[0] & 1 else None


def _why_not(key, value, settings):
    """Why ``value`` may not be held for ``key`` under ``settings``, or None."""
    if key in ("ip", "mac") and not isinstance(value, str):
        return "is not a string"
    if key == "ip":
        return _ip_why_not(value, settings["pool"])
    if key == "mac":
        return _mac_why_not(value)
    section, setting, _ = RANGE_SETTINGS[key]
    first, last = settings[section][setting]
    if isinstance(value, bool) or not isinstance(value, int) or not first <= value <= last:
        return f"is outside {section}.{setting} [{first}, {last}]"
    return None


def _candidates(key, settings):
    """Every value ``key`` may take, lowest first, ignoring which are in use."""
    if key == "ip":
        pool = settings["pool"]
        if pool is None:
            return
        net = ipaddress.IPv4Network(pool["cidr"])
        first = int(net.network_address) + 1 + pool["reserve_first"]
        for number in range(first, int(net.broadcast_address)):
            addr = str(ipaddress.IPv4Address(number))
            if addr != pool["gateway"] and addr not in pool["reserved"]:
                yield addr
    elif key == "mac":
        for suffix in MAC_SUFFIXES:
            yield f"{settings['mac_prefix']}:{suffix >> 16:02x}:{suffix >> 8 & 0xFF:02x}:{suffix & 0xFF:02x}"
    else:
        section, setting, _ = RANGE_SETTINGS[key]
        first, last = settings[section][setting]
        yield from range(first, last + 1)


def _free(key, settings, used):
    """The free values of ``key``, lowest first; ``used`` is read lazily, so it may grow meanwhile."""
    return (value for value in _candidates(key, settings) if value not in used)


def _exhausted(key, settings):
    if key == "ip":
        pool = settings["pool"]
        if pool is None:
            return "no pool (pool.cidr) is configured to take an address from"
        return (
            f"no free address left in the pool {pool['cidr']} (the network and broadcast addresses, the "
            f"gateway, the first {pool['reserve_first']} host addresses and pool.reserved are never given)"
        )
    if key == "mac":
        return f"no free MAC address left under mac_prefix {settings['mac_prefix']}"
    section, setting, what = RANGE_SETTINGS[key]
    return f"no free {what} left in {section}.{setting} {settings[section][setting]}"


# --- allocation -----------------------------------------------------------------------------


def _memory_cap(settings, definitions, entries):
    cap = settings.get("memory_cap") or 0
    total = sum(definition["memory"] for definition in definitions.values())
    if cap <= 0 or total <= cap:
        return []
    new = [f"vm {name!r} ({definitions[name]['memory']} MiB)" for name in sorted(definitions)
           if name not in entries]
    culprits = ", ".join(new) or "none (the memory of VMs already allocated grew)"
    return [f"memory_cap: the VMs' memory totals {total} MiB, over the cap of {cap} MiB; "
            f"new VM(s) pushing it over: {culprits}"]


def _check_existing(name, definition, alloc, settings, errors):
    """An existing allocation must still be valid and agree with the definition's fixed values."""
    for key, value in alloc.items():
        if key not in ALLOC_KEYS:
            continue
        why = _why_not(key, value, settings)
        if why:
            errors.append(f"vm {name!r}: {key}: the allocated {value!r} {why}; an allocation never "
                          f"changes: fix the settings, or destroy and re-create the VM")
        fixed = definition.get(key)
        if fixed is not None and _norm(key, fixed) != _norm(key, value):
            errors.append(f"vm {name!r}: {key}: the definition fixes {fixed!r} but the VM already has "
                          f"{value!r}; an allocation never changes: drop the fixed value, or destroy "
                          f"and re-create the VM")


def _claim_fixed(name, definition, alloc, owners, settings, known):
    """Reserve the definition's fixed values not yet allocated; return the problems."""
    errors = []
    for key in FIXABLE_KEYS:
        fixed = definition.get(key)
        if fixed is None or key in alloc:
            continue
        value = _norm(key, fixed)
        why = _why_not(key, value, settings)
        owner = owners[key].get(value)
        if why:
            errors.append(f"vm {name!r}: {key}: the fixed {fixed!r} {why}")
        elif owner is not None and owner[0] != name:
            other, how = owner
            hint = "" if other in known or how != "allocated to" else " (no longer defined: release it first)"
            errors.append(f"vm {name!r}: {key}: {fixed!r} is already {how} vm {other!r}{hint}")
        else:
            owners[key][value] = (name, "fixed for")
            alloc[key] = value
    return errors


def _fill_lowest_free(allocs, owners, settings):
    """Give each VM, in name order, the lowest free value of every key it lacks; return the problems."""
    errors = []
    free = {key: _free(key, settings, owners[key]) for key in ALLOC_KEYS}
    for name in sorted(allocs):
        for key in (key for key in ALLOC_KEYS if key not in allocs[name]):
            value = next(free[key], None)
            if value is None:
                errors.append(f"vm {name!r}: {key}: {_exhausted(key, settings)}")
            else:
                owners[key][value] = (name, "allocated to")
                allocs[name][key] = value
    return errors


def allocate(settings, definitions, registry, taken=None):
    """
    Give every VM of ``definitions`` its IP, MAC, DRBD port and minor and VNC display.

    Returns a new registry. Existing allocations are kept unchanged; fixed
    values of a definition are used and may collide with no other VM; the
    rest take the lowest free value of their pool or range, VMs in sorted
    name order. VMs in the registry but not in ``definitions`` are kept
    (``release`` frees them). Checks ``memory_cap`` against the total
    memory of ``definitions``. ``taken`` ({key: {value: (vm, how)}}) holds
    values other pairs hold that this one may not give (MACs, see
    ``allocate_pair``). Raises ``Invalid`` listing every problem; never
    returns a partial registry.

    Example:

    .. code-block:: python

        registry = alloc.allocate(settings, definitions, registry)
    """
    errors = collisions(registry)
    entries = _entries(registry, errors)
    errors += _memory_cap(settings, definitions, entries)
    owners = {key: dict((taken or {}).get(key, {})) for key in ALLOC_KEYS}
    for name in sorted(entries):
        for key, value in entries[name]["alloc"].items():
            owners.get(key, {}).setdefault(_norm(key, value), (name, "allocated to"))
    allocs = {name: dict(entries.get(name, {}).get("alloc", {})) for name in definitions}
    for name in sorted(definitions):
        _check_existing(name, definitions[name], allocs[name], settings, errors)
    for name in sorted(definitions):
        errors += _claim_fixed(name, definitions[name], allocs[name], owners, settings, definitions)
    errors += _fill_lowest_free(allocs, owners, settings)
    checks.raise_all(errors)
    for name, alloc in allocs.items():
        ordered = {key: alloc[key] for key in ALLOC_KEYS}
        entry = entries.setdefault(name, {"definition": None})
        entry["alloc"] = {**ordered, **alloc}
    return _registry(registry, entries)


def release(registry, name):
    """
    Return a new registry without VM ``name``; its values become free.

    Releasing a VM that is not in the registry returns it unchanged, so a
    destroy that is run again finishes.

    Example:

    .. code-block:: python

        registry = alloc.release(registry, "web1")
    """
    errors = []
    entries = _entries(registry, errors)
    checks.raise_all(errors)
    entries.pop(name, None)
    return _registry(registry, entries)


def collisions(registry):
    """
    List the values held by more than one VM of the registry (empty when clean).

    Each item is a sentence naming the key, the value and the VMs, for a
    verify command.

    Example:

    .. code-block:: python

        alloc.collisions(registry)  # ["ip '203.0.113.5' is allocated to ..."]
    """
    holders = {}
    for name, entry in _entries(registry, []).items():
        for key, value in entry["alloc"].items():
            if key in ALLOC_KEYS:
                holders.setdefault((key, repr(_norm(key, value))), []).append(name)
    return [
        f"{key} {value} is allocated to more than one VM: {', '.join(repr(n) for n in sorted(names))}"
        for (key, value), names in sorted(holders.items())
        if len(names) > 1
    ]


# --- several pairs on one master ------------------------------------------------------------


def pair_entry(settings):
    """What a pair's registry keeps of its settings (``registry["pair"]``), for the checks
    between pairs and to find a pair's hosts without compiling pillar."""
    pool = settings["pool"]
    return {"name": settings["pair_name"], "hosts": copy.deepcopy(settings["pair"]),
            "pool": {"cidr": pool["cidr"], "network": pool["network"]} if pool else None}


def _taken_elsewhere(others):
    """{"mac": {mac: (vm, how)}}: the MACs the other pairs hold (unique across the master)."""
    macs = {}
    for pair in sorted(others):
        for name, entry in sorted(_entries(others[pair], []).items()):
            if entry["alloc"].get("mac"):
                macs[_norm("mac", entry["alloc"]["mac"])] = (name, f"allocated in pair {pair!r} to")
    return {"mac": macs}


def _pool_overlap(mine, theirs, pair):
    if not mine or not theirs or mine["network"] != theirs.get("network"):
        return None
    if not ipaddress.IPv4Network(mine["cidr"]).overlaps(ipaddress.IPv4Network(theirs["cidr"])):
        return None
    return (f"pool: {mine['cidr']} overlaps pair {pair!r}'s pool {theirs['cidr']} on the same public "
            f"network {mine['network']!r} (pool.network): give the pairs pools that do not overlap, or "
            f"set pool.network if they are on separate public networks")


def pair_problems(settings, names, registry, others):
    """What keeps a pair from its registry on a master with the ``others`` ({pair: registry}):
    a host or a VM name in another pair, a pool overlapping another pair's on the same public
    network, or a registry recorded for other hosts (two pairs with one ``pair_name``)."""
    errors, pair = [], settings["pair_name"]
    mine = pair_entry(settings)
    recorded = sorted((registry or {}).get("pair", {}).get("hosts") or {})
    if recorded and recorded != sorted(mine["hosts"]) and (registry or {}).get("vms"):
        errors.append(f"pair_name: pair {pair!r} is registered with hosts {', '.join(recorded)}, but this "
                      f"pillar gives it {', '.join(sorted(mine['hosts']))}: give each pair its own "
                      f"pairvm:pair_name (a pair's hosts change only once it has no VM)")
    for other in sorted(others):
        theirs = others[other].get("pair") or {}
        for host in sorted(set(mine["hosts"]) & set(theirs.get("hosts") or {})):
            errors.append(f"pair.{host}: is a host of pair {other!r} already: a host is in one pair only")
        overlap = _pool_overlap(mine["pool"], theirs.get("pool"), other)
        if overlap:
            errors.append(overlap)
        for name in sorted(set(names) & set(others[other].get("vms") or {})):
            errors.append(f"vm {name!r}: is a VM of pair {other!r} already: VM names are unique across "
                          f"the master")
    return errors


def allocate_pair(settings, definitions, registry, others):
    """
    ``allocate`` for one pair of a master that may have several (``others``:
    {pair: registry} of the other pairs).

    Refuses, before anything is allocated, what ``pair_problems`` finds; MACs
    the other pairs hold are not given. IPs, DRBD ports and minors and VNC
    displays are the pair's own. The result records the pair (``pair_entry``).

    Example:

    .. code-block:: python

        registry = alloc.allocate_pair(settings, definitions, registry, others)
    """
    errors = pair_problems(settings, set(definitions) | set((registry or {}).get("vms") or {}),
                           registry, others)
    try:
        result = allocate(settings, definitions, registry, taken=_taken_elsewhere(others))
    except Invalid as exc:
        errors.append(str(exc))
    checks.raise_all(errors)
    return {**result, "pair": pair_entry(settings)}


def fleet_collisions(registries):
    """
    What the registries of all pairs ({pair: registry}) give twice across pairs, for
    verify: a MAC, a VM name, a host, or overlapping pools on one public network.

    Example:

    .. code-block:: python

        alloc.fleet_collisions(registry.pairs(opts))
    """
    found, seen = [], {"mac": {}, "vm": {}, "host": {}}
    for pair in sorted(registries):
        saved = registries[pair]
        for name, entry in sorted(_entries(saved, []).items()):
            values = {"vm": name, "mac": _norm("mac", entry["alloc"].get("mac"))}
            for key, value in values.items():
                if value is not None and seen[key].setdefault(value, pair) != pair:
                    found.append(f"{key} {value!r} is in pair {seen[key][value]!r} and pair {pair!r}")
        for host in registry_hosts(saved):
            if seen["host"].setdefault(host, pair) != pair:
                found.append(f"host {host!r} is in pair {seen['host'][host]!r} and pair {pair!r}")
    pools = {pair: (saved.get("pair") or {}).get("pool") for pair, saved in registries.items()}
    for first in sorted(pools):
        for second in sorted(p for p in pools if p > first):
            overlap = _pool_overlap(pools[first], pools[second], second)
            if overlap:
                found.append(f"pair {first!r}: {overlap}")
    return found


def registry_hosts(saved):
    """The minion ids a registry records for its pair, sorted ([] before its first allocation)."""
    return sorted(((saved or {}).get("pair") or {}).get("hosts") or {})
