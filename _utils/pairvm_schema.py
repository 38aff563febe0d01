"""pairvm_schema: validation of the pairvm pillar and the VM record.

Pure logic (no I/O) implementing docs/data-model.md, for the pairvm execution
module, states and runners: ``__utils__["pairvm_schema.<function>"](...)``.
Every public function takes and returns plain data. Problems are raised as one
``SaltInvocationError`` listing all of them, one a line, each naming the VM
(if any), the key and why.
"""

import copy
import ipaddress
import re

import yaml

from salt.exceptions import SaltInvocationError

NAME_RULE = (
    "1 to 12 characters: a lower-case letter, then lower-case letters, digits or hyphens "
    "(the name becomes the LV, the DRBD resource, the libvirt domain and the tap vm-<name>, "
    "at most 15 characters)"
)
PAIR_IP_KEYS = ("admin_ip", "replication_ip")
POOL_KEYS = ("cidr", "gateway", "reserve_first", "reserved")
DEFAULTS = {
    "drbd": {"port_range": [7800, 7999], "minor_range": [0, 199]},
    "vnc": {"display_range": [1, 99]},
    "mac_prefix": "52:54:00",
    "bridge": "br0",
    "memory_cap": 0,
    "domain_type": "kvm",
    "volume_groups": ["here", "there"],
}
# [lowest, highest] allowed for each range setting.
RANGE_LIMITS = {
    ("drbd", "port_range"): (1024, 65535),
    ("drbd", "minor_range"): (0, 1048575),
    # VNC listens on 5900+N; 9999 keeps it far below the ephemeral ports (32768+).
    ("vnc", "display_range"): (0, 9999),
}
VNC_BASE_PORT = 5900
DEFAULT_RESERVE_FIRST = 4
# Top-level pillar keys this schema validates; any other key is passed through.
OWNED_KEYS = ("pair", "pool", *DEFAULTS, "vms", "backup")
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
MIN_DISC_MIB = 16
MAX_MIB = 2**43  # 8 EiB, the largest LV LVM can make
MAX_VCPUS = 64
MAX_MEMORY_MIB = 2**24  # 16 TiB
# drbdadm gives these words a meaning of their own: a resource may not be called so.
DRBD_RESERVED = ("all", "common", "global")

_NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,11}")
# The patterns below match pairvm_render's, so whatever passes here renders there.
# A first character that is alphanumeric keeps '-' (option injection), '.' and '..' out.
_IFACE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
_MINION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,252}")
_VG_RE = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9_+.-]{0,126}")
_TOKEN_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_MAC_RE = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}", re.IGNORECASE)
_PREFIX_RE = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){2}", re.IGNORECASE)
_SIZE_RE = re.compile(r"([0-9]+)(?:\.([0-9]+))?\s*(?:([mgt])(?:ib)?)?", re.IGNORECASE)
_UNIT_MIB = {"m": 1, "g": 1024, "t": 1024 * 1024}
# Control characters (XML 1.0 cannot carry most), surrogates, non-characters.
_SSH_USER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")
_SSH_HOST_RE = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\]"
)
_CRON_FIELD_RE = re.compile(r"[0-9*/,-]+")
COMPRESSIONS = ("gzip", "zstd")
BACKUP_DEFAULTS = {
    "key": "/root/.ssh/pairvm_backup",
    "known_hosts": "/root/.ssh/known_hosts",
    "port": 22,
    "speed": 10240,  # KiB/s
    "compress": "gzip",
    "snapshot_size": "20%",
    "schedule": {},
}
_NOT_TEXT_RE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
_BASE60_HINT = "quote it in YAML: unquoted, YAML 1.1 reads 52:54:00 as a base-60 number"


class _Invalid(ValueError):
    """One problem with one value; public functions gather them into SaltInvocationError."""


def _raise_all(errors):
    if errors:
        raise SaltInvocationError("\n".join(errors))


def _check(errors, prefix, func, *args):
    """Run one check; on failure note ``prefix + why`` and return None."""
    try:
        return func(*args)
    except _Invalid as exc:
        errors.append(f"{prefix}{exc}")
        return None


def _vm(name):
    return f"vm {name!r}: "


# --- scalar checks: return the normalized value or raise _Invalid ---------------------------


def _name(name):
    if name in DRBD_RESERVED:
        raise _Invalid(f"{name!r} is reserved by drbdadm ({', '.join(DRBD_RESERVED)})")
    if isinstance(name, str) and _NAME_RE.fullmatch(name):
        return name
    why = ""
    if isinstance(name, str):
        bad = sorted({c for c in name if not re.fullmatch(r"[a-z0-9-]", c)})
        if len(name) > 12:
            why = f" (it has {len(name)})"
        elif bad:
            why = f" (it contains {''.join(bad)!r})"
        elif name:
            why = " (it must start with a letter)"
    raise _Invalid(f"must be {NAME_RULE}, got {name!r}{why}")


def _whole(value, low, high=None, what="a whole number"):
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        upper = f" to {high}" if high is not None else " or more"
        raise _Invalid(f"must be {what} from {low}{upper}, got {value!r}")
    return value


def _memory(value):
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_MEMORY_MIB:
        raise _Invalid(f"must be a whole number of MiB > 0 (at most {MAX_MEMORY_MIB}), got {value!r}")
    return value


def _size_mib(value, minimum):
    usage = "must be a whole number of MiB or a size like '512M', '10G', '1.5T' (binary units)"
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _Invalid(f"{usage}, got {value!r}")
    if isinstance(value, int):
        mib = value
    else:
        match = _SIZE_RE.fullmatch(value.strip())
        if not match:
            raise _Invalid(f"{usage}, got {value!r}")
        digits, fraction, unit = match.group(1), match.group(2) or "", (match.group(3) or "m").lower()
        mib, rest = divmod(int(digits + fraction) * _UNIT_MIB[unit], 10 ** len(fraction))
        if rest:
            raise _Invalid(f"is not a whole number of MiB, got {value!r}")
    if mib < minimum:
        raise _Invalid(f"must be at least {minimum} MiB, got {value!r}")
    if mib > MAX_MIB:
        raise _Invalid(f"must be at most {MAX_MIB} MiB (8 EiB), got {value!r}")
    return mib


def _ipv4(value):
    if not isinstance(value, str):
        raise _Invalid(f"must be an IPv4 address as a string, got {value!r}")
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise _Invalid(f"is not a valid IPv4 address, got {value!r}") from None


def _network(value):
    if not isinstance(value, str) or "/" not in value:
        raise _Invalid(f"must be an IPv4 network like '203.0.113.0/24', got {value!r}")
    try:
        net = ipaddress.IPv4Network(value)
    except ValueError as exc:
        raise _Invalid(f"is not a valid IPv4 network ({exc}), got {value!r}") from None
    if net.prefixlen > 30:
        raise _Invalid(f"must be a /30 or larger to hold a gateway and VMs, got {value!r}")
    return net


def _iface(value):
    if not isinstance(value, str) or not _IFACE_RE.fullmatch(value) or value in (".", ".."):
        raise _Invalid(
            f"must be an interface name of 1 to 15 letters, digits, '_', '.' or '-', "
            f"starting with a letter or digit, got {value!r}"
        )
    return value


def _mac(value):
    hint = f" ({_BASE60_HINT})" if isinstance(value, int) and not isinstance(value, bool) else ""
    if not isinstance(value, str) or not _MAC_RE.fullmatch(value):
        raise _Invalid(f"must be a MAC address like '52:54:00:12:34:56'{hint}, got {value!r}")
    mac = value.lower()
    if int(mac[:2], 16) & 0x01 or mac == "00:00:00:00:00:00":
        raise _Invalid(f"must be a unicast address (bit 0x01 of the first octet clear), got {value!r}")
    return mac


def _mac_prefix(value):
    hint = f" ({_BASE60_HINT})" if isinstance(value, int) and not isinstance(value, bool) else ""
    if not isinstance(value, str) or not _PREFIX_RE.fullmatch(value):
        raise _Invalid(f"must be 3 hex octets like '52:54:00'{hint}, got {value!r}")
    if int(value[:2], 16) & 0x03 != 0x02:
        raise _Invalid(
            f"must be locally administered unicast (bit 0x02 of the first octet set, 0x01 clear), "
            f"got {value!r}"
        )
    return value.lower()


def _choice(value, choices):
    if value not in choices:
        raise _Invalid(f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def _bool(value):
    if not isinstance(value, bool):
        raise _Invalid(f"must be true or false, got {value!r}")
    return value


def _abs_path(value):
    if (
        not isinstance(value, str)
        or not value.startswith("/")
        or ".." in value.split("/")
        or _NOT_TEXT_RE.search(value)
        or len(value) > 4096
    ):
        raise _Invalid(f"must be an absolute path without '..' or control characters, got {value!r}")
    return value


def _token(value):
    if not isinstance(value, str) or not _TOKEN_RE.fullmatch(value):
        raise _Invalid(f"must be a word of 1 to 64 letters, digits, '_', '.' or '-', got {value!r}")
    return value


def _text(value):
    if not isinstance(value, str) or _NOT_TEXT_RE.search(value):
        raise _Invalid(f"must be a string without control characters, got {value!r}")
    return value


def _destination(value, name=None):
    """``user@host:/path`` (``_NAME`` -> name) -> {user, host, path}; see parse_destination."""
    if not isinstance(value, str):
        raise _Invalid(f"must be user@host:/path, got {value!r}")
    text = value.replace("_NAME", name) if name else value
    user, at, rest = text.partition("@")
    host, colon, path = rest.partition(":") if not rest.startswith("[") else _bracketed(rest)
    if not (at and colon):
        raise _Invalid(f"must be user@host:/path, got {value!r}")
    if not _SSH_USER_RE.fullmatch(user):
        raise _Invalid(f"{value!r}: the user {user!r} must be letters, digits, '_', '.' or '-' "
                       f"and must not start with '-'")
    if not _SSH_HOST_RE.fullmatch(host):
        raise _Invalid(f"{value!r}: the host {host!r} must be a host name or an address "
                       f"(no '-' first, no whitespace or shell characters)")
    if not path.startswith("/"):
        raise _Invalid(f"{value!r}: the path {path!r} must be absolute")
    if path.endswith("/") or ".." in path.split("/") or _NOT_TEXT_RE.search(path) or len(path) > 4096:
        raise _Invalid(f"{value!r}: the path {path!r} must name a file, without '..' or control characters")
    return {"user": user, "host": host, "path": path}


def _bracketed(rest):
    """'[::1]:/path' -> ('[::1]', ':', '/path')."""
    end = rest.find("]")
    if end < 0:
        return rest, "", ""
    return rest[: end + 1], rest[end + 1: end + 2], rest[end + 2:]


def _speed(value):
    return _whole(value, 0, 2**31, "a whole number of KiB/s (0: no limit)")


def _snapshot_size(value):
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,3}%", value) and 0 < int(value[:-1]) <= 100:
        return value
    _size_mib(value, 4)
    return value


def _cron(value):
    fields = value.split() if isinstance(value, str) else []
    if len(fields) != 5 or not all(_CRON_FIELD_RE.fullmatch(f) for f in fields):
        raise _Invalid(f"must be five cron fields like '30 2 * * *' (minute hour day month weekday), "
                       f"got {value!r}")
    return " ".join(fields)


def parse_destination(value, name=None):
    """
    Parse a backup destination ``user@host:/path``; ``_NAME`` becomes ``name``.

    Refuses a user or host that starts with ``-`` or holds whitespace or shell
    characters, a relative path, ``..`` and control characters. Returns
    ``{"user", "host", "path"}``; raises ``SaltInvocationError`` naming what
    is wrong.

    Example (utils are not on the Salt CLI; modules, states and runners call them):

    .. code-block:: python

        __utils__["pairvm_schema.parse_destination"]("bk@store:/backup/_NAME.gz", "vm1")
    """
    errors = []
    result = _check(errors, "destination: ", _destination, value, name)
    _raise_all(errors)
    return result


# --- settings -------------------------------------------------------------------------------


def validate_name(name):
    """
    Check a VM name against the data model's rule; return it unchanged.

    A name is 1 to 12 characters, a lower-case letter then lower-case
    letters, digits or hyphens, so ``vm-<name>`` fits a 15-character
    interface name and no ``/``, ``..`` or shell metacharacter ever reaches
    a path or command. Raises ``SaltInvocationError`` naming the rule.

    Example (utils are not on the Salt CLI; modules, states and runners call them):

    .. code-block:: python

        __utils__["pairvm_schema.validate_name"]("web1")
    """
    errors = []
    _check(errors, f"{_vm(name)}name: ", _name, name)
    _raise_all(errors)
    return name


def parse_size_mib(value, minimum=MIN_DISC_MIB):
    """
    Parse a disc size into whole MiB.

    Accepts an int (MiB) or a string ``1024`` (MiB), ``512M``, ``10G``,
    ``1.5T``, also ``MiB``/``GiB``/``TiB`` suffixes, case-insensitive, binary
    units. Rejects booleans, garbage, fractions of a MiB and sizes below
    ``minimum`` (default 16 MiB, the smallest disc).

    Example (utils are not on the Salt CLI; modules, states and runners call them):

    .. code-block:: python

        __utils__["pairvm_schema.parse_size_mib"]("10G")  # 10240
    """
    errors = []
    mib = _check(errors, "size: ", _size_mib, value, minimum)
    _raise_all(errors)
    return mib


def _mapping(value, key, errors):
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.append(f"{key}: must be a mapping, got {value!r}")
        return {}
    return value


def _given(mapping, key, default):
    """``mapping[key]``, or ``default`` when absent or null (an empty YAML value)."""
    value = mapping.get(key)
    return default if value is None else value


def _unknown(mapping, allowed, where, errors):
    extra = sorted(str(k) for k in mapping if k not in allowed)
    if extra:
        errors.append(f"{where}: unknown key(s) {', '.join(extra)}; allowed: {', '.join(allowed)}")


def _pair(raw, errors):
    pair = _mapping(raw, "pair", errors)
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
        host = _mapping(pair[minion], f"pair.{minion}", errors)
        _unknown(host, PAIR_IP_KEYS, f"pair.{minion}", errors)
        result[minion] = {}
        for key in PAIR_IP_KEYS:
            addr = _check(errors, f"pair.{minion}.{key}: ", _ipv4, host.get(key))
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
        addr = _check(errors, "pool.reserved: ", _ipv4, item)
        if addr is not None and net is not None and addr not in net:
            errors.append(f"pool.reserved: {item!r} is outside the pool {str(net)!r}")
        elif addr is not None:
            found.add(addr)
    return [str(a) for a in sorted(found)]


def _pool(raw, errors):
    if raw is None:
        return None
    pool = _mapping(raw, "pool", errors)
    _unknown(pool, POOL_KEYS, "pool", errors)
    net = _check(errors, "pool.cidr: ", _network, pool.get("cidr"))
    gateway = _check(errors, "pool.gateway: ", _ipv4, pool.get("gateway"))
    first = _given(pool, "reserve_first", DEFAULT_RESERVE_FIRST)
    first = _check(errors, "pool.reserve_first: ", _whole, first, 0)
    reserved = _reserved_list(pool.get("reserved"), net, errors)
    if net is None or gateway is None or first is None:
        return None
    if gateway not in net or gateway in (net.network_address, net.broadcast_address):
        errors.append(f"pool.gateway: {str(gateway)!r} is not a host address of the pool {str(net)!r}")
    result = {"cidr": str(net), "gateway": str(gateway), "reserve_first": first, "reserved": reserved}
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
        given = _mapping(raw.get(section), section, errors)
        defaults = DEFAULTS[section]
        _unknown(given, tuple(defaults), section, errors)
        result[section] = {
            key: _range(section, key, _given(given, key, default), errors)
            for key, default in defaults.items()
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

    Fills the data model's defaults. Returns ``pair`` ({minion id: {admin_ip,
    replication_ip}}), ``pool`` ({cidr, gateway, reserve_first, reserved} or
    None when no pool is set), ``drbd`` ({port_range, minor_range}), ``vnc``
    ({display_range}), ``mac_prefix``, ``bridge``, ``memory_cap``,
    ``domain_type`` and ``volume_groups``; keys this schema does not own
    (``libvirt_uri``, ``machines_dir``, ...) are passed through unchanged.

    Example (utils are not on the Salt CLI; modules, states and runners call them):

    .. code-block:: python

        __utils__["pairvm_schema.settings"](__pillar__.get("pairvm", {}))
    """
    errors = []
    raw = _mapping(pairvm_pillar, "pairvm", errors)
    result = {key: copy.deepcopy(value) for key, value in raw.items() if key not in OWNED_KEYS}
    result["pair"] = _pair(raw.get("pair"), errors)
    result["pool"] = _pool(raw.get("pool"), errors)
    result.update(_ranges(raw, errors))
    for key, func, args in (
        ("mac_prefix", _mac_prefix, ()),
        ("bridge", _iface, ()),
        ("memory_cap", _whole, (0, MAX_MIB, "a whole number of MiB")),
        ("domain_type", _choice, (DOMAIN_TYPES,)),
    ):
        result[key] = _check(errors, f"{key}: ", func, _given(raw, key, DEFAULTS[key]), *args)
    result["volume_groups"] = _volume_groups(_given(raw, "volume_groups", DEFAULTS["volume_groups"]), errors)
    result["backup"] = _backup(raw.get("backup"), errors)
    if result["pool"] and not errors:
        _hosts_outside_pool(result["pair"], result["pool"], errors)
    _raise_all(errors)
    return result


_BACKUP_CHECKS = {
    "key": (_abs_path,), "known_hosts": (_abs_path,), "port": (_whole, 1, 65535, "a TCP port"),
    "speed": (_speed,), "compress": (_choice, COMPRESSIONS), "snapshot_size": (_snapshot_size,),
}
_JOB_KEYS = ("vms", "destination", "cron", "speed", "compress")


def _backup(raw, errors):
    """pairvm:backup: SSH key, known_hosts, port, speed, compress, snapshot_size, schedule."""
    raw = _mapping(raw, "backup", errors)
    _unknown(raw, tuple(BACKUP_DEFAULTS), "backup", errors)
    result = {
        key: _check(errors, f"backup.{key}: ", check[0], _given(raw, key, BACKUP_DEFAULTS[key]), *check[1:])
        for key, check in _BACKUP_CHECKS.items()
    }
    schedule = _mapping(raw.get("schedule"), "backup.schedule", errors)
    result["schedule"] = {job: _backup_job(job, definition, result, errors)
                          for job, definition in sorted(schedule.items())}
    return result


def backup_settings(raw):
    """
    Validate pillar ``pairvm:backup`` alone and fill its defaults (``BACKUP_DEFAULTS``).

    Example (utils are not on the Salt CLI; modules, states and runners call them):

    .. code-block:: python

        __utils__["pairvm_schema.backup_settings"](__pillar__["pairvm"].get("backup"))
    """
    errors = []
    result = _backup(raw, errors)
    _raise_all(errors)
    return result


def _backup_job(job, raw, defaults, errors):
    prefix = f"backup.schedule.{job}: "
    _check(errors, prefix, _token, job)
    raw = _mapping(raw, prefix.rstrip(": "), errors)
    _unknown(raw, _JOB_KEYS, prefix.rstrip(": "), errors)
    vms = _given(raw, "vms", "all")
    if vms != "all":
        vms = [_check(errors, f"{prefix}vms: ", _name, v) for v in vms] if isinstance(vms, list) else None
        if not vms:
            errors.append(f"{prefix}vms: must be 'all' or a list of VM names, got {raw.get('vms')!r}")
    return {
        "vms": vms,
        "destination": _check(errors, f"{prefix}destination: ",
                              lambda v: _required(v, _destination) and v, raw.get("destination")),
        "cron": _check(errors, f"{prefix}cron: ", lambda v: _required(v, _cron), raw.get("cron")),
        "speed": _check(errors, f"{prefix}speed: ", _speed, _given(raw, "speed", defaults["speed"])),
        "compress": _check(errors, f"{prefix}compress: ", _choice,
                           _given(raw, "compress", defaults["compress"]), COMPRESSIONS),
    }


# --- VM definitions -------------------------------------------------------------------------


def _fixed_ip(value, settings):
    addr = _ipv4(value)
    pool = settings["pool"]
    if pool is None:
        raise _Invalid(f"{value!r} cannot be used: no pool (pool.cidr) is configured")
    if addr not in ipaddress.IPv4Network(pool["cidr"]):
        raise _Invalid(f"{value!r} is outside the pool {pool['cidr']!r}")
    why = _excluded(addr, pool)
    if why:
        raise _Invalid(f"{value!r} is {why}, never given to a VM")
    return str(addr)


_OPTION_CHECKS = {"kernel": _abs_path, "initrd": _abs_path, "cmdline": _text, "machine": _token,
                  "cpu_model": _token}


def _hypervisor_options(value, prefix, errors):
    """Check ``hypervisor_options``, noting every problem; return the valid options."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.append(f"{prefix}must be a mapping of {', '.join(HYPERVISOR_OPTIONS)}, got {value!r}")
        return {}
    _unknown(value, HYPERVISOR_OPTIONS, prefix.rstrip(": "), errors)
    given = {key: value[key] for key in HYPERVISOR_OPTIONS if value.get(key) is not None}
    result = {key: _check(errors, f"{prefix}{key}: ", _OPTION_CHECKS[key], option)
              for key, option in given.items()}
    if "kernel" not in given and {"initrd", "cmdline"} & set(given):
        errors.append(f"{prefix}initrd and cmdline need kernel (direct kernel boot)")
    return result


def _disc(definition):
    if definition.get("disc") is not None and definition.get("disc_mib") is not None:
        raise _Invalid("give disc or disc_mib, not both")
    if definition.get("disc_mib") is not None:
        return _whole(definition["disc_mib"], MIN_DISC_MIB, MAX_MIB, "a whole number of MiB")
    if definition.get("disc") is None:
        raise _Invalid("is required (a size like '10G')")
    return _size_mib(definition["disc"], MIN_DISC_MIB)


def _required(value, func, *args):
    if value is None:
        raise _Invalid("is required")
    return func(value, *args)


def _optional(value, default, func, *args):
    return default if value is None else func(value, *args)


def _definition_checks(settings):
    """{key: check} for the definition keys checked one by one; None means not given."""
    ports, displays = settings["drbd"]["port_range"], settings["vnc"]["display_range"]
    return {
        "home": lambda v: _required(v, _choice, tuple(sorted(settings["pair"]))),
        "memory": lambda v: _required(v, _memory),
        "vcpus": lambda v: _optional(v, 1, _whole, 1, MAX_VCPUS),
        "ip": lambda v: _optional(v, None, _fixed_ip, settings),
        "mac": lambda v: _optional(v, None, _mac),
        "bridge": lambda v: _optional(v, None, _iface),
        "drbd_port": lambda v: _optional(v, None, _whole, *ports, "a whole number in drbd.port_range"),
        "vnc_display": lambda v: _optional(v, None, _whole, *displays, "a whole number in vnc.display_range"),
        "state": lambda v: _optional(v, "running", _choice, STATES),
        "suppress": lambda v: _optional(v, False, _bool),
        "cdrom": lambda v: _optional(v, None, _abs_path),
    }


def vm_definition(name, definition, settings):
    """
    Validate one VM definition against normalized ``settings``; return it normalized.

    The result has every definition key of the data model: ``home``,
    ``memory``, ``vcpus``, ``disc_mib`` (``disc`` parsed), fixed ``ip``,
    ``mac``, ``bridge``, ``drbd_port``, ``vnc_display`` (None: allocated or
    the pair default), ``state``, ``suppress``, ``hypervisor_options`` and
    ``cdrom``. The result is itself a valid definition (``disc_mib`` is
    accepted in place of ``disc``). Raises ``SaltInvocationError`` with every
    problem.

    Example (utils are not on the Salt CLI; modules, states and runners call them):

    .. code-block:: python

        __utils__["pairvm_schema.vm_definition"]("web1", {"home": "hostA", "memory": 1024,
                                                          "disc": "10G"}, settings)
    """
    errors = []
    _check(errors, f"{_vm(name)}name: ", _name, name)
    definition = {} if definition is None else definition
    if not isinstance(definition, dict):
        errors.append(f"{_vm(name)}definition: must be a mapping, got {definition!r}")
        _raise_all(errors)
    _unknown(definition, DEFINITION_KEYS, f"{_vm(name)}definition", errors)
    checks = _definition_checks(settings)
    result = {key: _check(errors, f"{_vm(name)}{key}: ", func, definition.get(key))
              for key, func in checks.items()}
    result["disc_mib"] = _check(errors, f"{_vm(name)}disc: ", _disc, definition)
    result["hypervisor_options"] = _hypervisor_options(
        definition.get("hypervisor_options"), f"{_vm(name)}hypervisor_options: ", errors
    )
    _raise_all(errors)
    return {key: result[key] for key in DEFINITION_KEYS if key != "disc"}


def vms(pairvm_pillar):
    """
    Validate the whole ``vms`` map of pillar ``pairvm:``; return {name: normalized definition}.

    Validates the settings first (the VMs are checked against them), then
    every VM, and raises one ``SaltInvocationError`` listing the problems of
    all VMs.

    Example (utils are not on the Salt CLI; modules, states and runners call them):

    .. code-block:: python

        __utils__["pairvm_schema.vms"](__pillar__.get("pairvm", {}))
    """
    normalized = settings(pairvm_pillar)
    errors = []
    defined = _mapping(pairvm_pillar.get("vms"), "vms", errors)
    result = {}
    for name in sorted(defined, key=str):
        try:
            result[name] = vm_definition(name, defined[name], normalized)
        except SaltInvocationError as exc:
            errors.append(str(exc))
    _raise_all(errors)
    return result


# --- installing a guest OS: image catalogue, hostname, password hash -----------------------

IMAGE_FORMATS = ("raw", "qcow2")
IMAGE_KEYS = ("source", "format", "sha256")
_IMAGE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}", re.IGNORECASE)
_URL_RE = re.compile(r"https?://[^\s/?#@]+(/[^\s#]*)?")
_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
# SHA-512 crypt (glibc crypt(3) "$6$"): optional rounds, salt of up to 16, 86 characters of hash.
_SHA512_CRYPT_RE = re.compile(r"\$6\$(?:rounds=[0-9]{1,9}\$)?[./A-Za-z0-9]{1,16}\$[./A-Za-z0-9]{86}")
_SSH_KEY_RE = re.compile(
    r"(?:ssh-[a-z0-9-]+|ecdsa-sha2-[a-z0-9-]+|sk-[a-z0-9@.-]+) [A-Za-z0-9+/=]+(?: [^\n]*)?"
)


def _image_source(value):
    if isinstance(value, str) and value.startswith("/"):
        return _abs_path(value)
    if isinstance(value, str) and _URL_RE.fullmatch(value) and not _NOT_TEXT_RE.search(value):
        return value
    raise _Invalid(f"must be an absolute path or an http(s) URL without spaces, got {value!r}")


def _sha256(value):
    if not isinstance(value, str) or not _SHA256_RE.fullmatch(value):
        raise _Invalid(f"must be 64 hexadecimal digits (sha256sum of the file), got {value!r}")
    return value.lower()


def images(pairvm_pillar):
    """
    Validate the image catalogue, pillar ``pairvm:images``: {name: {source, format, sha256}}.

    ``name`` is 1 to 64 lower-case letters, digits, ``.``, ``_`` or ``-``
    (e.g. ``bookworm``); ``source`` an absolute path on the host or an
    http(s) URL; ``format`` ``raw`` or ``qcow2``; ``sha256`` the file's
    sha256sum. Returns the normalized catalogue ({} when none is set).

    Example (utils are not on the Salt CLI; modules, states and runners call them):

    .. code-block:: python

        __utils__["pairvm_schema.images"](__pillar__.get("pairvm", {}))
    """
    errors = []
    raw = _mapping(_mapping(pairvm_pillar, "pairvm", errors).get("images"), "images", errors)
    result = {}
    for name in sorted(raw, key=str):
        where = f"images.{name}"
        if not isinstance(name, str) or not _IMAGE_NAME_RE.fullmatch(name):
            errors.append(f"images: {name!r} is not an image name (1 to 64 lower-case letters, "
                          f"digits, '.', '_' or '-', starting with a letter or digit)")
            continue
        entry = _mapping(raw[name], where, errors)
        _unknown(entry, IMAGE_KEYS, where, errors)
        image = {}
        for key, func, args in (("source", _image_source, ()), ("format", _choice, (IMAGE_FORMATS,)),
                                ("sha256", _sha256, ())):
            if entry.get(key) is None:
                errors.append(f"{where}.{key}: is required")
            else:
                image[key] = _check(errors, f"{where}.{key}: ", func, entry[key], *args)
        result[name] = image
    _raise_all(errors)
    return result


def guest_ssh_keys(pairvm_pillar):
    """
    Validate pillar ``pairvm:guest_ssh_keys``: SSH public keys (one line each)
    that an installed guest's root accepts. Returns the list ([] when unset).

    Example (utils are not on the Salt CLI; modules, states and runners call them):

    .. code-block:: python

        __utils__["pairvm_schema.guest_ssh_keys"](__pillar__.get("pairvm", {}))
    """
    errors = []
    raw = _mapping(pairvm_pillar, "pairvm", errors).get("guest_ssh_keys")
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise SaltInvocationError(f"guest_ssh_keys: must be a list of SSH public keys, got {raw!r}")
    for index, key in enumerate(raw):
        if not isinstance(key, str) or not _SSH_KEY_RE.fullmatch(key.strip()) or _NOT_TEXT_RE.search(key):
            errors.append(f"guest_ssh_keys[{index}]: must be one SSH public key line "
                          f"('ssh-ed25519 AAAA... comment'), got {key!r}")
    _raise_all(errors)
    return [key.strip() for key in raw]


def validate_fqdn(hostname):
    """
    Check a guest's host name: a fully qualified domain name (RFC 1123).

    Two or more labels of 1 to 63 letters, digits or inner hyphens, at most
    253 characters in all, a last label that is not all digits; one trailing
    dot is allowed. Returns it in lower case, without the trailing dot.

    Example (utils are not on the Salt CLI; modules, states and runners call them):

    .. code-block:: python

        __utils__["pairvm_schema.validate_fqdn"]("web1.example.org")
    """
    why = None
    name = hostname[:-1] if isinstance(hostname, str) and hostname.endswith(".") else hostname
    if not isinstance(name, str) or not name:
        why = "it is empty or not a string"
    elif len(name) > 253:
        why = f"it has {len(name)} characters, more than 253"
    else:
        labels = name.split(".")
        bad = [label for label in labels if not _LABEL_RE.fullmatch(label)]
        if len(labels) < 2:
            why = "it has one label: give the domain too (e.g. web1.example.org)"
        elif bad:
            why = (f"label {bad[0]!r} is not 1 to 63 letters, digits or hyphens "
                   f"(no hyphen first or last)")
        elif labels[-1].isdigit():
            why = "its last label is all digits"
    if why:
        raise SaltInvocationError(f"hostname: {hostname!r} is not a fully qualified domain name: {why}")
    return name.lower()


def is_password_hash(value):
    """
    True if ``value`` is a SHA-512 crypt hash (``$6$salt$hash``, as made by
    ``openssl passwd -6`` or ``mkpasswd -m sha-512``). Never echo ``value``:
    it may be a plaintext password given by mistake.

    Example (utils are not on the Salt CLI; modules, states and runners call them):

    .. code-block:: python

        __utils__["pairvm_schema.is_password_hash"](password)
    """
    return isinstance(value, str) and bool(_SHA512_CRYPT_RE.fullmatch(value))


# --- the VM record (layer 2) ----------------------------------------------------------------


def record(name, definition, alloc, settings):
    """
    Build the VM record (``/machines/<vm>``) from a normalized definition and its allocation.

    ``peer`` is the other minion of the pair; ``hosts`` maps both minion ids
    to {admin_ip, replication_ip, vg} with the home VG (``here``) on the home
    host and the replica VG (``there``) on the peer. Fixed values of the
    definition win over ``alloc``.

    Example (utils are not on the Salt CLI; modules, states and runners call them):

    .. code-block:: python

        __utils__["pairvm_schema.record"]("web1", definition, registry["vms"]["web1"]["alloc"], settings)
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
    _raise_all(errors)
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


class _RecordDumper(yaml.SafeDumper):
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

    Example (utils are not on the Salt CLI; modules, states and runners call them):

    .. code-block:: python

        __utils__["pairvm_schema.dump_record"](record)
    """
    _raise_all(_record_errors(record))
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

    Example (utils are not on the Salt CLI; modules, states and runners call them):

    .. code-block:: python

        __utils__["pairvm_schema.load_record"](text)
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SaltInvocationError(f"record: not valid YAML: {exc}") from None
    _raise_all(_record_errors(data))
    if strict and dump_record(data) != text:
        raise SaltInvocationError(f"{_vm(data['name'])}record: not in canonical form (edited by hand?)")
    return data
