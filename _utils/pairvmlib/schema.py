"""The pillar ``pairvm:`` and the VM record, validated (docs/data-model.md).

Pure logic (no I/O) for the execution modules, states and runners. Every
public function takes and returns plain data. Problems are raised as one
``Invalid`` listing all of them, one a line, each naming the VM (if any),
the key and why.
"""

import copy
import ipaddress
import re

import yaml

from pairvmlib import backup, checks, defaults
from pairvmlib.errors import Invalid

PAIR_IP_KEYS = ("admin_ip", "replication_ip")
POOL_KEYS = ("cidr", "gateway", "reserve_first", "reserved", "network")
# [lowest, highest] allowed for each range setting.
RANGE_LIMITS = {
    ("drbd", "port_range"): (1024, 65535),
    ("drbd", "minor_range"): (0, 1048575),
    # VNC listens on 5900+N; 9999 keeps it far below the ephemeral ports (32768+).
    ("vnc", "display_range"): (0, 9999),
}
VNC_BASE_PORT = 5900
# The settings this schema validates and fills; any other top-level key is passed through.
CHECKED_SETTINGS = ("drbd", "vnc", "mac_prefix", "bridge", "memory_cap", "domain_type", "volume_groups")
OWNED_KEYS = ("pair_name", "pair", "pool", *CHECKED_SETTINGS, "vms", "backup")
DOMAIN_TYPES = ("kvm", "qemu")
STATES = ("running", "stopped")
HYPERVISOR_OPTIONS = ("kernel", "initrd", "cmdline", "machine", "cpu_model")
DEFINITION_KEYS = (
    "home", "memory", "vcpus", "disc", "disc_mib", "ip", "mac", "bridge", "drbd_port",
    "vnc_display", "state", "suppress", "hypervisor_options", "cdrom",
)
RECORD_KEYS = (
    "name", "home", "peer", "memory", "vcpus", "disc_mib", "ip", "prefix", "gateway", "mac",
    "bridge", "drbd_port", "drbd_minor", "vnc_display", "state", "suppress", "domain_type",
    "hypervisor_options", "cdrom", "hosts",
)
ALLOC_KEYS = ("ip", "mac", "drbd_port", "drbd_minor", "vnc_display")
MAX_VCPUS = 64
_MINION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,252}")
_VG_RE = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9_+.-]{0,126}")


def _vm(name):
    return f"vm {name!r}: "


# --- settings -------------------------------------------------------------------------------


def validate_name(name):
    """
    Check a VM name against the data model's rule; return it unchanged.

    A name is 1 to 12 characters, a lower-case letter then lower-case
    letters, digits or hyphens, so ``vm-<name>`` fits a 15-character
    interface name and no ``/``, ``..`` or shell metacharacter ever reaches
    a path or command. Raises ``Invalid`` naming the rule.

    Example:

    .. code-block:: python

        schema.validate_name("web1")
    """
    errors = []
    checks.gather(errors, f"{_vm(name)}name: ", checks.vm_name, name)
    checks.raise_all(errors)
    return name


def parse_size_mib(value, minimum=checks.MIN_DISC_MIB):
    """
    Parse a disc size into whole MiB.

    Accepts an int (MiB) or a string ``1024`` (MiB), ``512M``, ``10G``,
    ``1.5T``, also ``MiB``/``GiB``/``TiB`` suffixes, case-insensitive, binary
    units. Rejects booleans, garbage, fractions of a MiB and sizes below
    ``minimum`` (default 16 MiB, the smallest disc).

    Example:

    .. code-block:: python

        schema.parse_size_mib("10G")  # 10240
    """
    errors = []
    mib = checks.gather(errors, "size: ", checks.size_mib, value, minimum)
    checks.raise_all(errors)
    return mib


def _pair(raw, errors):
    pair = checks.mapping(raw, "pair", errors)
    if len(pair) != 2:
        errors.append(
            f"pair: must map exactly two minion ids to {{admin_ip, replication_ip}}, "
            f"got {len(pair)}: {sorted(map(str, pair))}"
        )
    result, seen = {}, {}
    for minion in sorted(pair, key=str):
        if not isinstance(minion, str) or not _MINION_RE.fullmatch(minion):
            errors.append(f"pair: {minion!r} is not a minion id (letters, digits, '_', '.', '-')")
            continue
        host = checks.mapping(pair[minion], f"pair.{minion}", errors)
        checks.unknown(host, PAIR_IP_KEYS, f"pair.{minion}", errors)
        result[minion] = {}
        for key in PAIR_IP_KEYS:
            addr = checks.gather(errors, f"pair.{minion}.{key}: ", checks.address, host.get(key))
            if addr is not None and addr in seen:
                errors.append(f"pair.{minion}.{key}: {str(addr)!r} is also {seen[addr]}")
            elif addr is not None:
                seen[addr] = f"pair.{minion}.{key}"
            result[minion][key] = str(addr) if addr is not None else None
    return result


def _reserved_list(raw, net, errors):
    if raw is None:
        return []
    if not isinstance(raw, list):
        errors.append(f"pool.reserved: must be a list of IPv4 addresses, got {raw!r}")
        return []
    found = set()
    for item in raw:
        addr = checks.gather(errors, "pool.reserved: ", checks.address, item)
        if addr is not None and net is not None and addr not in net:
            errors.append(f"pool.reserved: {item!r} is outside the pool {str(net)!r}")
        elif addr is not None:
            found.add(addr)
    return [str(a) for a in sorted(found)]


def _pool(raw, errors):
    if raw is None:
        return None
    pool = checks.mapping(raw, "pool", errors)
    checks.unknown(pool, POOL_KEYS, "pool", errors)
    net = checks.gather(errors, "pool.cidr: ", checks.network, pool.get("cidr"))
    gateway = checks.gather(errors, "pool.gateway: ", checks.address, pool.get("gateway"))
    first = checks.given(pool, "reserve_first", defaults.POOL["reserve_first"])
    first = checks.gather(errors, "pool.reserve_first: ", checks.whole, first, 0)
    reserved = _reserved_list(pool.get("reserved"), net, errors)
    network = checks.gather(errors, "pool.network: ", checks.token,
                            checks.given(pool, "network", defaults.POOL["network"]))
    if net is None or gateway is None or first is None or network is None:
        return None
    if gateway not in net or gateway in (net.network_address, net.broadcast_address):
        errors.append(f"pool.gateway: {str(gateway)!r} is not a host address of the pool {str(net)!r}")
    result = {"cidr": str(net), "gateway": str(gateway), "reserve_first": first, "reserved": reserved,
              "network": network}
    if not _any_allocatable(net, result):
        errors.append(
            f"pool: no address of {str(net)!r} is left for VMs after the gateway, "
            f"pool.reserve_first ({first}) and pool.reserved"
        )
    return result


def _any_allocatable(net, pool):
    """Whether one host address of ``net`` is neither the gateway, nor first-N, nor reserved."""
    first = pool["reserve_first"]
    taken = {pool["gateway"], *pool["reserved"]}
    later = [a for a in taken if int(ipaddress.IPv4Address(a)) - int(net.network_address) > first]
    return net.num_addresses - 2 - first - len(later) > 0


def _range(section, key, raw, errors):
    low, high = RANGE_LIMITS[(section, key)]
    where = f"{section}.{key}: "
    if (
        not isinstance(raw, list | tuple)
        or len(raw) != 2
        or any(isinstance(v, bool) or not isinstance(v, int) for v in raw)
        or not low <= raw[0] <= raw[1] <= high
    ):
        errors.append(f"{where}must be [first, last] with {low} <= first <= last <= {high}, got {raw!r}")
        return None
    return [raw[0], raw[1]]


def _ranges(raw, errors):
    result = {}
    for section in ("drbd", "vnc"):
        given = checks.mapping(raw.get(section), section, errors)
        wanted = defaults.SETTINGS[section]
        checks.unknown(given, tuple(wanted), section, errors)
        result[section] = {
            key: _range(section, key, checks.given(given, key, default), errors)
            for key, default in wanted.items()
        }
    ports, displays = result["drbd"]["port_range"], result["vnc"]["display_range"]
    if ports and displays:
        vnc_first, vnc_last = VNC_BASE_PORT + displays[0], VNC_BASE_PORT + displays[1]
        if vnc_first <= ports[1] and ports[0] <= vnc_last:
            errors.append(
                f"vnc.display_range: VNC ports {vnc_first}..{vnc_last} overlap drbd.port_range {ports}"
            )
    return result


def _volume_groups(raw, errors):
    if (
        not isinstance(raw, list)
        or len(raw) != 2
        or not all(isinstance(vg, str) and _VG_RE.fullmatch(vg) and vg not in (".", "..") for vg in raw)
        or raw[0] == raw[1]
    ):
        errors.append(
            f"volume_groups: must be two distinct volume group names [home VG, replica VG], got {raw!r}"
        )
        return None
    return list(raw)


def _excluded(addr, pool):
    """Why ``addr`` (in the pool) is never given to a VM, or None."""
    net = ipaddress.IPv4Network(pool["cidr"])
    if addr in (net.network_address, net.broadcast_address):
        return "the network or broadcast address"
    if str(addr) == pool["gateway"]:
        return "the gateway"
    if int(addr) - int(net.network_address) <= pool["reserve_first"]:
        return f"one of the first {pool['reserve_first']} host addresses (pool.reserve_first)"
    if str(addr) in pool["reserved"]:
        return "reserved (pool.reserved)"
    return None


def _hosts_outside_pool(pair, pool, errors):
    net = ipaddress.IPv4Network(pool["cidr"])
    for minion, host in pair.items():
        for key, value in host.items():
            addr = ipaddress.IPv4Address(value) if value else None
            if addr in net and not _excluded(addr, pool):
                errors.append(
                    f"pair.{minion}.{key}: {value!r} is in the VM pool {pool['cidr']!r}; "
                    f"list it in pool.reserved so no VM gets it"
                )


def settings(pairvm_pillar):
    """
    Validate and normalize the settings of pillar ``pairvm:`` (all but ``vms``).

    Fills the data model's defaults. Returns ``pair_name``, ``pair``
    ({minion id: {admin_ip, replication_ip}}), ``pool`` ({cidr, gateway,
    reserve_first, reserved, network} or None when no pool is set),
    ``drbd`` ({port_range, minor_range}), ``vnc`` ({display_range}),
    ``mac_prefix``, ``bridge``, ``memory_cap``, ``domain_type`` and
    ``volume_groups``; keys this schema does not own (``libvirt_uri``,
    ``machines_dir``, ...) are passed through unchanged.

    Example:

    .. code-block:: python

        schema.settings(__pillar__.get("pairvm", {}))
    """
    errors = []
    raw = checks.mapping(pairvm_pillar, "pairvm", errors)
    result = {key: copy.deepcopy(value) for key, value in raw.items() if key not in OWNED_KEYS}
    result["pair_name"] = checks.gather(errors, "pair_name: ", checks.pair_name,
                                        checks.given(raw, "pair_name", defaults.SETTINGS["pair_name"]))
    result["pair"] = _pair(raw.get("pair"), errors)
    result["pool"] = _pool(raw.get("pool"), errors)
    result.update(_ranges(raw, errors))
    for key, func, args in (
        ("mac_prefix", checks.mac_prefix, ()),
        ("bridge", checks.iface, ()),
        ("memory_cap", checks.whole, (0, checks.MAX_MIB, "a whole number of MiB")),
        ("domain_type", checks.choice, (DOMAIN_TYPES,)),
    ):
        result[key] = checks.gather(errors, f"{key}: ", func, checks.given(raw, key, defaults.SETTINGS[key]),
                                    *args)
    result["volume_groups"] = _volume_groups(
        checks.given(raw, "volume_groups", defaults.SETTINGS["volume_groups"]), errors)
    result["backup"] = backup.settings_problems(raw.get("backup"), errors)
    if result["pool"] and not errors:
        _hosts_outside_pool(result["pair"], result["pool"], errors)
    checks.raise_all(errors)
    return result


# --- VM definitions -------------------------------------------------------------------------


def _fixed_ip(value, settings):
    addr = checks.address(value)
    pool = settings["pool"]
    if pool is None:
        raise Invalid(f"{value!r} cannot be used: no pool (pool.cidr) is configured")
    if addr not in ipaddress.IPv4Network(pool["cidr"]):
        raise Invalid(f"{value!r} is outside the pool {pool['cidr']!r}")
    why = _excluded(addr, pool)
    if why:
        raise Invalid(f"{value!r} is {why}, never given to a VM")
    return str(addr)


_OPTION_CHECKS = {"kernel": checks.abs_path, "initrd": checks.abs_path, "cmdline": checks.text,
                  "machine": checks.token, "cpu_model": checks.token}


def _hypervisor_options(value, prefix, errors):
    """Check ``hypervisor_options``, noting every problem; return the valid options."""
    value = checks.mapping(value, prefix.rstrip(": "), errors)
    checks.unknown(value, HYPERVISOR_OPTIONS, prefix.rstrip(": "), errors)
    given = {key: value[key] for key in HYPERVISOR_OPTIONS if value.get(key) is not None}
    result = {key: checks.gather(errors, f"{prefix}{key}: ", _OPTION_CHECKS[key], option)
              for key, option in given.items()}
    if "kernel" not in given and {"initrd", "cmdline"} & set(given):
        errors.append(f"{prefix}initrd and cmdline need kernel (direct kernel boot)")
    return result


def _disc(definition):
    if definition.get("disc") is not None and definition.get("disc_mib") is not None:
        raise Invalid("give disc or disc_mib, not both")
    if definition.get("disc_mib") is not None:
        return checks.whole(definition["disc_mib"], checks.MIN_DISC_MIB, checks.MAX_MIB,
                            "a whole number of MiB")
    if definition.get("disc") is None:
        raise Invalid("is required (a size like '10G')")
    return checks.size_mib(definition["disc"], checks.MIN_DISC_MIB)


def _optional(value, default, func, *args):
    return default if value is None else func(value, *args)


def _definition_checks(settings):
    """{key: check} for the definition keys checked one by one; None means not given."""
    ports, displays = settings["drbd"]["port_range"], settings["vnc"]["display_range"]
    return {
        "home": lambda v: checks.required(v, checks.choice, tuple(sorted(settings["pair"]))),
        "memory": lambda v: checks.required(v, checks.memory),
        "vcpus": lambda v: _optional(v, 1, checks.whole, 1, MAX_VCPUS),
        "ip": lambda v: _optional(v, None, _fixed_ip, settings),
        "mac": lambda v: _optional(v, None, checks.mac),
        "bridge": lambda v: _optional(v, None, checks.iface),
        "drbd_port": lambda v: _optional(v, None, checks.whole, *ports, "a whole number in drbd.port_range"),
        "vnc_display": lambda v: _optional(v, None, checks.whole, *displays,
                                           "a whole number in vnc.display_range"),
        "state": lambda v: _optional(v, "running", checks.choice, STATES),
        "suppress": lambda v: _optional(v, False, checks.boolean),
        "cdrom": lambda v: _optional(v, None, checks.abs_path),
    }


def vm_definition(name, definition, settings):
    """
    Validate one VM definition against normalized ``settings``; return it normalized.

    The result has every definition key of the data model: ``home``,
    ``memory``, ``vcpus``, ``disc_mib`` (``disc`` parsed), fixed ``ip``,
    ``mac``, ``bridge``, ``drbd_port``, ``vnc_display`` (None: allocated or
    the pair default), ``state``, ``suppress``, ``hypervisor_options`` and
    ``cdrom``. The result is itself a valid definition (``disc_mib`` is
    accepted in place of ``disc``). Raises ``Invalid`` with every
    problem.

    Example:

    .. code-block:: python

        schema.vm_definition("web1", {"home": "hostA", "memory": 1024,
                                                          "disc": "10G"}, settings)
    """
    errors = []
    checks.gather(errors, f"{_vm(name)}name: ", checks.vm_name, name)
    definition = {} if definition is None else definition
    if not isinstance(definition, dict):
        errors.append(f"{_vm(name)}definition: must be a mapping, got {definition!r}")
        checks.raise_all(errors)
    checks.unknown(definition, DEFINITION_KEYS, f"{_vm(name)}definition", errors)
    field_checks = _definition_checks(settings)
    result = {key: checks.gather(errors, f"{_vm(name)}{key}: ", func, definition.get(key))
              for key, func in field_checks.items()}
    result["disc_mib"] = checks.gather(errors, f"{_vm(name)}disc: ", _disc, definition)
    result["hypervisor_options"] = _hypervisor_options(
        definition.get("hypervisor_options"), f"{_vm(name)}hypervisor_options: ", errors
    )
    checks.raise_all(errors)
    return {key: result[key] for key in DEFINITION_KEYS if key != "disc"}


def vms(pairvm_pillar):
    """
    Validate the whole ``vms`` map of pillar ``pairvm:``; return {name: normalized definition}.

    Validates the settings first (the VMs are checked against them), then
    every VM, and raises one ``Invalid`` listing the problems of
    all VMs.

    Example:

    .. code-block:: python

        schema.vms(__pillar__.get("pairvm", {}))
    """
    normalized = settings(pairvm_pillar)
    errors = []
    defined = checks.mapping(pairvm_pillar.get("vms"), "vms", errors)
    result = {}
    for name in sorted(defined, key=str):
        try:
            result[name] = vm_definition(name, defined[name], normalized)
        except Invalid as exc:
            errors.append(str(exc))
    checks.raise_all(errors)
    return result


def resized(pairvm_pillar):
    """
    {vm: MiB} of pillar ``pairvm:resized``: the disc sizes ``salt-run pairvm.resize``
    recorded in the registry for VMs whose pillar files give a smaller ``disc``.
    Raises ``Invalid`` on a value that is not a whole number of MiB.

    Example:

    .. code-block:: python

        schema.resized(__pillar__.get("pairvm", {}))  # {"web1": 20480}
    """
    errors = []
    given = checks.mapping(pairvm_pillar.get("resized"), "resized", errors)
    result = {name: checks.gather(errors, f"resized.{name}: ", checks.whole, mib, checks.MIN_DISC_MIB,
                                  checks.MAX_MIB, "a whole number of MiB")
              for name, mib in sorted(given.items(), key=str)}
    checks.raise_all(errors)
    return result


def homes(pairvm_pillar, settings):
    """
    {vm: minion} of pillar ``pairvm:homes``: the homes ``salt-run pairvm.swap`` recorded
    in the registry for VMs whose pillar files give another ``home``. Raises ``Invalid``
    on a value that is not a host of the pair.

    Example:

    .. code-block:: python

        schema.homes(__pillar__.get("pairvm", {}), settings)  # {"web1": "hostB"}
    """
    errors = []
    given = checks.mapping(pairvm_pillar.get("homes"), "homes", errors)
    hosts = tuple(sorted(settings["pair"]))
    result = {name: checks.gather(errors, f"homes.{name}: ", checks.choice, home, hosts)
              for name, home in sorted(given.items(), key=str)}
    checks.raise_all(errors)
    return result


# --- the VM record (layer 2) ----------------------------------------------------------------


def recorded_cdrom(definition, recorded):
    """
    ``definition`` with the CD recorded from a host or ``salt-run pairvm.cdrom``
    (pillar ``pairvm:cdroms``: ``{"path", "pillar"}``, served from the master's
    registry) in place of its ``cdrom``, as long as the definition's own
    ``cdrom`` is still what it was when the CD was recorded (``pillar``):
    whichever was changed last wins.

    Example:

    .. code-block:: python

        schema.recorded_cdrom(definitions["web1"], pairvm.get("cdroms", {}).get("web1"))
    """
    if not isinstance(recorded, dict) or definition.get("cdrom") != recorded.get("pillar"):
        return definition
    path = recorded.get("path")
    errors = []
    checks.gather(errors, "cdroms: ", _optional, path, None, checks.abs_path)
    checks.raise_all(errors)
    return {**definition, "cdrom": path}


def record(name, definition, alloc, settings):
    """
    Build the VM record (``/machines/<vm>``) from a normalized definition and its allocation.

    ``peer`` is the other minion of the pair; ``hosts`` maps both minion ids
    to {admin_ip, replication_ip, vg} with the home VG (``here``) on the home
    host and the replica VG (``there``) on the peer. Fixed values of the
    definition win over ``alloc``.

    Example:

    .. code-block:: python

        schema.record("web1", definition, registry["vms"]["web1"]["alloc"], settings)
    """
    validate_name(name)
    home, pool = definition.get("home"), settings["pool"]
    errors = []
    if home not in settings["pair"]:
        errors.append(f"{_vm(name)}home: {home!r} is not a minion of the pair")
    if pool is None:
        errors.append(f"{_vm(name)}pool: no pool (pool.cidr) is configured")
    values = {key: definition.get(key) if definition.get(key) is not None else (alloc or {}).get(key)
              for key in ALLOC_KEYS}
    missing = [key for key, value in values.items() if value is None]
    if missing:
        errors.append(f"{_vm(name)}alloc: no {', '.join(missing)} allocated")
    checks.raise_all(errors)
    peer = next(minion for minion in settings["pair"] if minion != home)
    here, there = settings["volume_groups"]
    return {
        "name": name, "home": home, "peer": peer,
        "memory": definition["memory"], "vcpus": definition["vcpus"], "disc_mib": definition["disc_mib"],
        "ip": values["ip"], "prefix": ipaddress.IPv4Network(pool["cidr"]).prefixlen,
        "gateway": pool["gateway"], "mac": values["mac"].lower(),
        "bridge": definition.get("bridge") or settings["bridge"],
        "drbd_port": values["drbd_port"], "drbd_minor": values["drbd_minor"],
        "vnc_display": values["vnc_display"],
        "state": definition["state"], "suppress": definition["suppress"],
        "domain_type": settings["domain_type"],
        "hypervisor_options": dict(definition.get("hypervisor_options") or {}),
        "cdrom": definition.get("cdrom"),
        "hosts": {
            minion: {**settings["pair"][minion], "vg": here if minion == home else there}
            for minion in sorted(settings["pair"])
        },
    }


_INT, _STR, _OPT_STR = "a whole number", "a string", "a string or null"
_RECORD_TYPES = {
    "name": _STR, "home": _STR, "peer": _STR, "memory": _INT, "vcpus": _INT, "disc_mib": _INT,
    "ip": _STR, "prefix": _INT, "gateway": _STR, "mac": _STR, "bridge": _STR, "drbd_port": _INT,
    "drbd_minor": _INT, "vnc_display": _INT, "state": _STR, "suppress": "true or false",
    "domain_type": _STR, "hypervisor_options": "a mapping", "cdrom": _OPT_STR, "hosts": "a mapping",
}


def _has_type(value, kind):
    if kind == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    return {
        _STR: isinstance(value, str),
        _OPT_STR: value is None or isinstance(value, str),
        "true or false": isinstance(value, bool),
        "a mapping": isinstance(value, dict),
    }[kind]


def _record_errors(data):
    if not isinstance(data, dict):
        return [f"record: must be a mapping, got {type(data).__name__}"]
    name = data.get("name")
    errors = []
    keys = set(data)
    if keys != set(RECORD_KEYS):
        errors.append(f"{_vm(name)}record: missing key(s) {sorted(set(RECORD_KEYS) - keys)}, "
                      f"unknown key(s) {sorted(map(str, keys - set(RECORD_KEYS)))}")
    for key, kind in _RECORD_TYPES.items():
        if key in data and not _has_type(data[key], kind):
            errors.append(f"{_vm(name)}{key}: must be {kind}, got {data[key]!r}")
    hosts = data.get("hosts")
    if isinstance(hosts, dict) and (
        len(hosts) != 2
        or not all(
            isinstance(h, dict) and set(h) == {"admin_ip", "replication_ip", "vg"}
            and all(isinstance(v, str) for v in h.values())
            for h in hosts.values()
        )
    ):
        errors.append(f"{_vm(name)}hosts: must map two minion ids to {{admin_ip, replication_ip, vg}}")
    return errors


# libyaml's emitter and parser when PyYAML has them: a steady-state apply renders and
# compares every VM's record (bench/vm_scale.py). Same bytes, same data, as the pure ones.
_SafeDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_yaml(text):
    """``yaml.safe_load`` of ``text`` (libyaml's parser when there is one)."""
    return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 - a safe loader


class _RecordDumper(_SafeDumper):
    """SafeDumper that double-quotes every string and never emits anchors."""

    def ignore_aliases(self, data):
        return True


_RecordDumper.add_representer(
    str, lambda dumper, data: dumper.represent_scalar("tag:yaml.org,2002:str", data, style='"')
)


def dump_record(record):
    """
    Render a VM record as canonical YAML text.

    Keys sorted, every string double-quoted (so a MAC is never read back as a
    base-60 number), ASCII only, no line folding, ending with a newline: both
    hosts write byte-identical files from the same record, so their digests
    can be compared.

    Example:

    .. code-block:: python

        schema.dump_record(record)
    """
    checks.raise_all(_record_errors(record))
    return yaml.dump(
        record, Dumper=_RecordDumper, sort_keys=True, default_flow_style=False,
        allow_unicode=False, width=2**31 - 1, explicit_start=False,
    )


def load_record(text, strict=False):
    """
    Parse a VM record written by ``dump_record``; return it as a dict.

    Checks it has exactly the record's keys with the right types. With
    ``strict=True`` the text must also be canonical (byte-identical to
    ``dump_record`` of the result), which detects hand edits.

    Example:

    .. code-block:: python

        schema.load_record(text)
    """
    try:
        data = parse_yaml(text)
    except yaml.YAMLError as exc:
        raise Invalid(f"record: not valid YAML: {exc}") from None
    checks.raise_all(_record_errors(data))
    if strict and dump_record(data) != text:
        raise Invalid(f"{_vm(data['name'])}record: not in canonical form (edited by hand?)")
    return data
