"""A host's network as ifupdown configuration, from pillar ``pairvm:host:network``.

Pure (no I/O): ``interfaces`` renders the admin interface, the replication
interface, VLANs and the VM bridge; ``interface_names`` lists them in the
order ``ifup`` must bring them up. The execution module ``pairvm_host``
serves them to ``salt/pairvm/host/network.sls``. Every value that reaches
the file is validated first; a bad value raises ``Invalid`` naming its
pillar key, the value and the rule.
"""

import ipaddress
import re

from pairvmlib import checks, names

# Linux interface names: 1..15 bytes, no '/', ':' or whitespace; ifupdown adds
# no quoting, so keep to a safe set. ifupdown takes any name with a dot for a
# VLAN <raw device>.<id> and creates it: a dot only in that form.
VLAN_DOTTED_RE = re.compile(r"([A-Za-z0-9][A-Za-z0-9_-]{0,9})\.([1-9][0-9]{0,3})")
VLAN_PLAIN_RE = re.compile(r"vlan([1-9][0-9]{0,3})")
RESERVED_IFNAMES = ("lo", "all", "none")
OPTION_KEY_RE = re.compile(r"[a-z][a-z0-9_-]{0,63}")
# One word or a few, from a safe set: no backslash (ifupdown joins the next
# line to a line ending in one), no '#', no quotes, no control characters.
OPTION_VALUE_RE = re.compile(r"[A-Za-z0-9._:/,=+@%-]+( [A-Za-z0-9._:/,=+@%-]+){0,15}")
# ifupdown runs these as shell commands: never from pillar (DESIGN: no pillar
# value is interpolated into a shell string).
HOOK_OPTIONS = ("pre_up", "up", "post_up", "down", "pre_down", "post_down")
# Words ifupdown reads as the start of a stanza or a directive wherever they
# stand: an option named like this would open a new stanza.
STANZA_KEYWORDS = ("iface", "auto", "mapping", "source", "source_directory", "rename", "no_auto_down",
                   "no_scripts", "template", "inherits")
NETWORK_KEYS = ("file", "apply", "admin", "replication", "vlans", "bridge")
LINK_KEYS = ("interface", "prefix", "gateway", "mtu", "options")
VLAN_KEYS = ("raw_device", "mtu", "options")
BRIDGE_KEYS = ("ports", "address", "gateway", "fd", "stp", "maxwait", "mtu", "options")
HEADER = "# Managed by Salt (pairvm): rendered from pillar pairvm:host:network. Local edits are overwritten."

# --- validation ----------------------------------------------------------------

def _mapping(field, value, allowed):
    """Return ``value`` (a dict, or {} for None) after refusing unknown keys."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        checks.fail(field, value, "must be a mapping")
    unknown = sorted(str(key) for key in value if key not in allowed)
    if unknown:
        checks.fail(field, unknown, f"are unknown keys (allowed: {', '.join(allowed)})")
    return value


def _ifname(field, value):
    """An interface name (``names.IFNAME_RULE``) where a dot only stands in a VLAN
    ``<raw>.<id>`` (``eth0.1000``): ifupdown creates a VLAN for any dotted name."""
    dotted = VLAN_DOTTED_RE.fullmatch(value) if isinstance(value, str) else None
    if not names.is_ifname(value) or ("." in value and not (dotted and int(dotted[2]) <= 4094)):
        checks.fail(field, value, f"is not an interface name ({names.IFNAME_RULE}, a dot only in a VLAN "
                                  "<raw device>.<id 1-4094> like eth0.1000)")
    if value in RESERVED_IFNAMES:
        checks.fail(field, value, f"is reserved ({', '.join(RESERVED_IFNAMES)})")
    return value


def _cidr(field, value):
    """An address with its prefix length, e.g. ``203.0.113.2/24``."""
    try:
        iface = ipaddress.IPv4Interface(value) if isinstance(value, str) and "/" in value else None
    except ValueError:
        iface = None
    if iface is None or str(iface) != value:
        checks.fail(field, value, "is not an IPv4 address with prefix length (like 203.0.113.2/24)")
    _host_address(field, iface)
    return iface


def _host_address(field, iface):
    """Refuse a network or broadcast address as a host address."""
    net = iface.network
    if net.prefixlen < 31 and iface.ip in (net.network_address, net.broadcast_address):
        checks.fail(field, str(iface), f"is the network or broadcast address of {net}")


def _gateway(field, value, iface):
    gateway = checks.ipv4(field, value)
    if gateway not in iface.network or gateway == iface.ip:
        checks.fail(field, value, f"must be another address inside {iface.network}")
    return gateway


def _options(field, options, rendered):
    """Extra ifupdown options of one stanza: ``{key: value}``, sorted.

    Keys we render ourselves and the hook options (shell commands) are refused.
    """
    options = {} if options is None else options
    if not isinstance(options, dict):
        checks.fail(field, options, "must be a mapping of ifupdown option -> value")
    lines = []
    for key in sorted(options, key=str):
        value = options[key]
        if not isinstance(key, str) or not OPTION_KEY_RE.fullmatch(key):
            checks.fail(field, key, f"is not an ifupdown option name (must match {OPTION_KEY_RE.pattern})")
        norm = key.replace("-", "_")
        if norm in HOOK_OPTIONS:
            checks.fail(f"{field}.{key}", value, "is refused: ifupdown runs it as a shell command")
        if norm in STANZA_KEYWORDS or norm.startswith("allow_"):
            checks.fail(f"{field}.{key}", value, "is refused: ifupdown reads it as a stanza keyword")
        if norm in rendered or norm.startswith("bridge_") or norm.startswith("vlan_"):
            checks.fail(f"{field}.{key}", value, "is set by pairvm itself (use its own pillar key)")
        if isinstance(value, bool) or not isinstance(value, str | int) \
                or not OPTION_VALUE_RE.fullmatch(str(value)):
            checks.fail(f"{field}.{key}", value,
                        f"must be a number or words matching {OPTION_VALUE_RE.pattern}")
        lines.append(f"{key} {value}")
    return lines


def _tail(field, stanza):
    """The last lines of every stanza: ``mtu`` when set, then the extra options."""
    lines = []
    if stanza.get("mtu") is not None:
        lines.append(f"mtu {checks.integer(f'{field}.mtu', stanza['mtu'], 68, 65535)}")
    rendered = ("address", "netmask", "gateway", "mtu")
    return lines + _options(f"{field}.options", stanza.get("options"), rendered)


# --- ifupdown --------------------------------------------------------------------

def _link(field, link, address):
    """Stanza of the admin or the replication interface: ``(name, iface, lines)``."""
    link = _mapping(field, link, LINK_KEYS)
    if "interface" not in link:
        checks.fail(f"{field}.interface", None, "is missing")
    name = _ifname(f"{field}.interface", link["interface"])
    if "prefix" not in link:
        checks.fail(f"{field}.prefix", None, "is missing (the address comes from pillar pairvm:pair)")
    prefix = checks.integer(f"{field}.prefix", link["prefix"], 1, 32)
    ip = checks.ipv4(f"{field} address (pairvm:pair)", address)
    iface = ipaddress.IPv4Interface(f"{ip}/{prefix}")
    _host_address(f"{field} address", iface)
    lines = [f"address {iface}"]
    if link.get("gateway") is not None:
        lines.append(f"gateway {_gateway(f'{field}.gateway', link['gateway'], iface)}")
    lines += _tail(field, link)
    return name, iface, ["inet static", *lines]


def _vlan(field, name, vlan):
    """``(raw_device, vlan_id, stanza lines)`` of a VLAN interface."""
    vlan = _mapping(field, vlan, VLAN_KEYS)
    raw = vlan.get("raw_device")
    dotted, plain = VLAN_DOTTED_RE.fullmatch(name), VLAN_PLAIN_RE.fullmatch(name)
    if dotted:
        vid = int(dotted[2])
        if raw is not None and raw != dotted[1]:
            checks.fail(f"{field}.raw_device", raw, f"differs from the raw device in the name {name!r}")
        raw, lines = dotted[1], []
    elif plain:
        vid = int(plain[1])
        if raw is None:
            checks.fail(f"{field}.raw_device", None,
                        f"is missing (VLAN {name} needs its raw device, e.g. eth0)")
        lines = [f"vlan-raw-device {_ifname(f'{field}.raw_device', raw)}"]
    else:
        checks.fail(field, name, "is not a VLAN interface name: use <raw device>.<id> (eth0.1000) or "
                           "vlan<id> (vlan1000) with raw_device; ifupdown takes the VLAN id from the name")
    if not 1 <= vid <= 4094:
        checks.fail(field, name, "has a VLAN id outside 1..4094")
    _ifname(f"{field}.raw_device", raw)
    lines += _tail(field, vlan)
    return raw, vid, ["inet manual", *lines]


def _bridge(field, name, bridge):
    """``(ports, address or None, stanza lines)`` of the VM bridge."""
    bridge = _mapping(field, bridge, BRIDGE_KEYS)
    ports = bridge.get("ports") or []
    if not isinstance(ports, list):
        checks.fail(f"{field}.ports", ports, "must be a list of interface names")
    ports = [_ifname(f"{field}.ports", port) for port in ports]
    if len(set(ports)) != len(ports):
        checks.fail(f"{field}.ports", ports, "lists an interface twice")
    if name in ports:
        checks.fail(f"{field}.ports", ports, f"contains the bridge {name} itself")
    address, lines = None, []
    if bridge.get("address") is not None:
        address = _cidr(f"{field}.address", bridge["address"])
        lines.append(f"address {address}")
        if bridge.get("gateway") is not None:
            lines.append(f"gateway {_gateway(f'{field}.gateway', bridge['gateway'], address)}")
    elif bridge.get("gateway") is not None:
        checks.fail(f"{field}.gateway", bridge["gateway"], "needs bridge.address")
    lines.append(f"bridge_ports {' '.join(ports) if ports else 'none'}")
    stp = bridge.get("stp", False)
    if not isinstance(stp, bool):
        checks.fail(f"{field}.stp", stp, "must be true or false")
    lines.append(f"bridge_stp {'on' if stp else 'off'}")
    fd = bridge.get("fd")
    lines.append(f"bridge_fd {checks.integer(f'{field}.fd', 0 if fd is None else fd, 0, 30)}")
    if bridge.get("maxwait") is not None:
        lines.append(f"bridge_maxwait {checks.integer(f'{field}.maxwait', bridge['maxwait'], 0, 300)}")
    lines += _tail(field, bridge)
    return ports, address, [f"inet {'static' if address else 'manual'}", *lines]


def _stanzas(network, admin_ip, replication_ip, bridge_name):
    """Validate the whole network and return ``[(name, comment, lines)]`` in ifup order."""
    network = _mapping("network", network, NETWORK_KEYS)
    bridge_name = _ifname("pairvm:bridge", bridge_name)
    stanzas, addressed = [], {}
    for role, address, what in (("admin", admin_ip, "admin: Salt, SSH, migration"),
                                ("replication", replication_ip, "replication: DRBD")):
        if network.get(role) is None:
            continue
        name, iface, lines = _link(f"network.{role}", network[role], address)
        if name in addressed:
            checks.fail(f"network.{role}.interface", name, f"is also the {addressed[name][0]} interface")
        stanzas.append((name, what, lines))
        addressed[name] = (role, iface)
    if bridge_name in addressed:
        checks.fail("pairvm:bridge", bridge_name, f"is also the {addressed[bridge_name][0]} interface")
    if len(addressed) == 2:
        (_, one), (_, two) = addressed.values()
        if one.network.overlaps(two.network):
            checks.fail("network", f"{one.network} / {two.network}",
                  "admin and replication networks overlap: give them separate subnets")

    vlans = network.get("vlans") or {}
    if not isinstance(vlans, dict):
        checks.fail("network.vlans", vlans, "must be a mapping of VLAN interface name -> settings")
    ports, address, bridge_lines = _bridge("network.bridge", bridge_name, network.get("bridge"))
    for port in ports:
        if port in addressed:
            checks.fail("network.bridge.ports", port,
                  f"is the {addressed[port][0]} interface, which has an address: it cannot be a bridge port")
    for name in sorted(vlans):
        field = f"network.vlans.{name}"
        _ifname(field, name)
        if name in addressed or name == bridge_name:
            checks.fail(field, name, "is already used by another interface of this host")
        raw, vid, lines = _vlan(field, name, vlans[name])
        if raw == bridge_name or raw in ports:
            checks.fail(f"{field}.raw_device", raw, "is the bridge or one of its ports")
        role = f", a port of {bridge_name}" if name in ports else ""
        stanzas.append((name, f"VLAN {vid} on {raw}{role}", lines))
    if address is not None:
        for role, iface in addressed.values():
            if address.network.overlaps(iface.network):
                checks.fail("network.bridge.address", str(address),
                            f"overlaps the {role} network {iface.network}")
    if network.get("bridge") is not None:
        stanzas.append((bridge_name, "the VMs' bridge", bridge_lines))
    return stanzas


def interfaces(network, admin_ip, replication_ip, bridge="br0"):
    """Render the ifupdown configuration of a pairvm host (``interfaces(5)`` syntax).

    ``network`` is pillar ``pairvm:host:network`` (``file`` and ``apply`` are
    ignored here); ``admin_ip`` / ``replication_ip`` come from
    ``pairvm:pair:<minion>``; ``bridge`` is ``pairvm:bridge``. One ``auto``
    stanza per interface, in the order ``ifup`` must bring them up: admin,
    replication, VLANs, then the bridge (``bridge_ports``, ``bridge_stp off``,
    ``bridge_fd 0`` unless set). A part set to null (or absent) is left out,
    for an interface configured elsewhere.

    VLANs: ``eth0.1000`` (ifupdown creates it natively) or ``vlan1000`` with
    ``raw_device`` (rendered as ``vlan-raw-device``; needs Debian's ``vlan``
    package). Extra ifupdown options per stanza go in ``options``; hook
    options (``up``, ``post-up``, ...) are refused: they are shell commands.

    Raises ValueError naming the pillar key when a value is invalid.

    Example:

    .. code-block:: python

        network.interfaces(
            {"admin": {"interface": "eth0", "prefix": 24}}, "192.0.2.11", "198.51.100.11", "br0")
    """
    text = [HEADER]
    for name, comment, lines in _stanzas(network, admin_ip, replication_ip, bridge):
        text += ["", f"# {comment}", f"auto {name}", f"iface {name} {lines[0]}",
                 *(f"    {line}" for line in lines[1:])]
    return "\n".join(text) + "\n"


def interface_names(network, admin_ip, replication_ip, bridge="br0"):
    """The interfaces of ``interfaces(...)``, in the order ``ifup`` must bring them up."""
    return [name for name, _, _ in _stanzas(network, admin_ip, replication_ip, bridge)]
