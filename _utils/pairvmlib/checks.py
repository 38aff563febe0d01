"""Value checks, in two styles, shared by the whole library.

- Field checks for the renderers (``render``, ``network``, ``hostsetup``):
  ``fail``, ``integer``, ``ipv4``, ``match`` raise ``Invalid`` naming the
  field, the value and the rule at the first problem, so no value reaches a
  rendered file unchecked.
- Scalar checks for the schemas (``schema``, ``backup``, ``images``): each
  returns the normalized value or raises ``Invalid`` saying why; ``gather``
  notes the problem with its key and goes on, and ``raise_all`` raises them
  together, one a line, so an operator sees every problem of a pillar at once.
"""

import ipaddress
import re

from pairvmlib import names
from pairvmlib.errors import Invalid

MIN_DISC_MIB = 16
MAX_MIB = 2**43  # 8 EiB, the largest LV LVM can make
MAX_MEMORY_MIB = 2**24  # 16 TiB
_TOKEN_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_MAC_RE = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}", re.IGNORECASE)
_PREFIX_RE = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){2}", re.IGNORECASE)
_SIZE_RE = re.compile(r"([0-9]+)(?:\.([0-9]+))?\s*(?:([mgt])(?:ib)?)?", re.IGNORECASE)
_UNIT_MIB = {"m": 1, "g": 1024, "t": 1024 * 1024}
# Control characters (XML 1.0 cannot carry most), surrogates, non-characters.
NOT_TEXT_RE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
_BASE60_HINT = "quote it in YAML: unquoted, YAML 1.1 reads 52:54:00 as a base-60 number"


def fail(field, value, why):
    """Raise the error every check uses: ``field: 'value' why``."""
    raise Invalid(f"{field}: {value!r} {why}")


def integer(field, value, low, high):
    """``value`` if it is an int (not a bool) within ``low..high``."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        fail(field, value, f"must be an integer in {low}..{high}")
    return value


def ipv4(field, value):
    """``value`` (a dotted quad in canonical form) as an ``IPv4Address``."""
    try:
        ok = isinstance(value, str) and str(ipaddress.IPv4Address(value)) == value
    except ValueError:
        ok = False
    if not ok:
        fail(field, value, "is not an IPv4 address")
    return ipaddress.IPv4Address(value)


def match(field, value, pattern, what):
    """``value`` if it is a str fully matching ``pattern``."""
    if not isinstance(value, str) or not pattern.fullmatch(value):
        fail(field, value, f"is not {what} (must match {pattern.pattern})")
    return value


# --- scalar checks: the normalized value, or Invalid saying why ----------------------------


def raise_all(errors):
    """Raise the problems noted by ``gather``, one a line (nothing when there are none)."""
    if errors:
        raise Invalid("\n".join(errors))


def gather(errors, prefix, func, *args):
    """Run one scalar check; on failure note ``prefix + why`` in ``errors`` and return None."""
    try:
        return func(*args)
    except Invalid as exc:
        errors.append(f"{prefix}{exc}")
        return None


def vm_name(name):
    problem = names.vm_name_problem(name)
    if problem:
        raise Invalid(problem)
    return name


def pair_name(name):
    if not names.is_pair_name(name):
        raise Invalid(f"must be {names.PAIR_NAME_RULE}, got {name!r}")
    return name


def whole(value, low, high=None, what="a whole number"):
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        upper = f" to {high}" if high is not None else " or more"
        raise Invalid(f"must be {what} from {low}{upper}, got {value!r}")
    return value


def memory(value):
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_MEMORY_MIB:
        raise Invalid(f"must be a whole number of MiB > 0 (at most {MAX_MEMORY_MIB}), got {value!r}")
    return value


def size_mib(value, minimum):
    usage = "must be a whole number of MiB or a size like '512M', '10G', '1.5T' (binary units)"
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise Invalid(f"{usage}, got {value!r}")
    if isinstance(value, int):
        mib = value
    else:
        match = _SIZE_RE.fullmatch(value.strip())
        if not match:
            raise Invalid(f"{usage}, got {value!r}")
        digits, fraction, unit = match.group(1), match.group(2) or "", (match.group(3) or "m").lower()
        mib, rest = divmod(int(digits + fraction) * _UNIT_MIB[unit], 10 ** len(fraction))
        if rest:
            raise Invalid(f"is not a whole number of MiB, got {value!r}")
    if mib < minimum:
        raise Invalid(f"must be at least {minimum} MiB, got {value!r}")
    if mib > MAX_MIB:
        raise Invalid(f"must be at most {MAX_MIB} MiB (8 EiB), got {value!r}")
    return mib


def address(value):
    if not isinstance(value, str):
        raise Invalid(f"must be an IPv4 address as a string, got {value!r}")
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise Invalid(f"is not a valid IPv4 address, got {value!r}") from None


def network(value):
    if not isinstance(value, str) or "/" not in value:
        raise Invalid(f"must be an IPv4 network like '203.0.113.0/24', got {value!r}")
    try:
        net = ipaddress.IPv4Network(value)
    except ValueError as exc:
        raise Invalid(f"is not a valid IPv4 network ({exc}), got {value!r}") from None
    if net.prefixlen > 30:
        raise Invalid(f"must be a /30 or larger to hold a gateway and VMs, got {value!r}")
    return net


def iface(value):
    if not names.is_ifname(value):
        raise Invalid(f"must be {names.IFNAME_RULE}, got {value!r}")
    return value


def _octets(value, pattern, what):
    """``value`` in lower case if it is hex octets matching ``pattern`` (``what`` says which)."""
    hint = f" ({_BASE60_HINT})" if isinstance(value, int) and not isinstance(value, bool) else ""
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise Invalid(f"must be {what}{hint}, got {value!r}")
    return value.lower()


def mac(value):
    mac = _octets(value, _MAC_RE, "a MAC address like '52:54:00:12:34:56'")
    if int(mac[:2], 16) & 0x01 or mac == "00:00:00:00:00:00":
        raise Invalid(f"must be a unicast address (bit 0x01 of the first octet clear), got {value!r}")
    return mac


def mac_prefix(value):
    _octets(value, _PREFIX_RE, "3 hex octets like '52:54:00'")
    if int(value[:2], 16) & 0x03 != 0x02:
        raise Invalid(
            f"must be locally administered unicast (bit 0x02 of the first octet set, 0x01 clear), "
            f"got {value!r}"
        )
    return value.lower()


def choice(value, choices):
    if value not in choices:
        raise Invalid(f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def boolean(value):
    if not isinstance(value, bool):
        raise Invalid(f"must be true or false, got {value!r}")
    return value


def abs_path(value):
    if (
        not isinstance(value, str)
        or not value.startswith("/")
        or ".." in value.split("/")
        or NOT_TEXT_RE.search(value)
        or len(value) > 4096
    ):
        raise Invalid(f"must be an absolute path without '..' or control characters, got {value!r}")
    return value


def token(value):
    if not isinstance(value, str) or not _TOKEN_RE.fullmatch(value):
        raise Invalid(f"must be a word of 1 to 64 letters, digits, '_', '.' or '-', got {value!r}")
    return value


def text(value):
    if not isinstance(value, str) or NOT_TEXT_RE.search(value):
        raise Invalid(f"must be a string without control characters, got {value!r}")
    return value


# --- pillar mappings ---------------------------------------------------------------------


def mapping(value, key, errors):
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.append(f"{key}: must be a mapping, got {value!r}")
        return {}
    return value


def given(mapping, key, default):
    """``mapping[key]``, or ``default`` when absent or null (an empty YAML value)."""
    value = mapping.get(key)
    return default if value is None else value


def unknown(mapping, allowed, where, errors):
    extra = sorted(str(k) for k in mapping if k not in allowed)
    if extra:
        errors.append(f"{where}: unknown key(s) {', '.join(extra)}; allowed: {', '.join(allowed)}")


def required(value, func, *args):
    if value is None:
        raise Invalid("is required")
    return func(value, *args)
