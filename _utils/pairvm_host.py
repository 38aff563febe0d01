"""Pure helpers of the pairvm host states (``salt/pairvm/host/``).

Rendering and checking without I/O, standard library only, loaded by Salt as
``__utils__["pairvm_host.FUNC"]`` (the execution module ``pairvm_host`` wraps
them for the SLS files):

- ``interfaces``: the ifupdown configuration of a host (admin interface,
  replication interface, VLANs, the VM bridge) from pillar
  ``pairvm:host:network``; ``interface_names`` lists its interfaces in the
  order ``ifup`` must bring them up.
- ``public_key`` and ``authorized_key_line``: SSH public keys checked before
  they reach ``authorized_keys`` / ``known_hosts``.
- ``pv_verdict``: whether a block device may become an LVM physical volume,
  from what was found on it (``blkid``, ``wipefs``, ``pvs``, sysfs).

Every value that reaches a rendered file is validated first; a bad value
raises ``ValueError`` naming its pillar key, the value and the rule.
"""

import base64
import binascii
import ipaddress
import re

# Linux interface names: 1..15 bytes, no '/', ':' or whitespace; ifupdown adds
# no quoting, so keep to a safe set. ifupdown takes any name with a dot for a
# VLAN <raw device>.<id> and creates it: a dot only in that form.
IFNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,14}")
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

KEY_TYPES = (
    "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
)
KEY_COMMENT_RE = re.compile(r"[A-Za-z0-9@._:+-]{1,100}")
# Restrictions an authorized_keys line may carry besides from="..." (no
# command=, environment=, permitopen=: those take values).
KEY_OPTIONS = ("no-agent-forwarding", "no-port-forwarding", "no-pty", "no-user-rc", "no-X11-forwarding",
               "restrict")


# --- validation ----------------------------------------------------------------

def _fail(field, value, why):
    raise ValueError(f"{field}: {value!r} {why}")


def _mapping(field, value, allowed):
    """Return ``value`` (a dict, or {} for None) after refusing unknown keys."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        _fail(field, value, "must be a mapping")
    unknown = sorted(str(key) for key in value if key not in allowed)
    if unknown:
        _fail(field, unknown, f"are unknown keys (allowed: {', '.join(allowed)})")
    return value


def _ifname(field, value):
    """An interface name: plain (``eth0``, ``br0``) or a VLAN ``<raw>.<id>`` (``eth0.1000``)."""
    dotted = VLAN_DOTTED_RE.fullmatch(value) if isinstance(value, str) else None
    if not isinstance(value, str) or len(value) > 15 or not (
            IFNAME_RE.fullmatch(value) or (dotted and int(dotted[2]) <= 4094)):
        _fail(field, value, f"is not an interface name (1-15 characters matching {IFNAME_RE.pattern}, "
                            "or a VLAN <raw device>.<id 1-4094> like eth0.1000)")
    if value in RESERVED_IFNAMES:
        _fail(field, value, f"is reserved ({', '.join(RESERVED_IFNAMES)})")
    return value


def _int(field, value, low, high):
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        _fail(field, value, f"must be an integer in {low}..{high}")
    return value


def _ipv4(field, value):
    try:
        ok = isinstance(value, str) and str(ipaddress.IPv4Address(value)) == value
    except ValueError:
        ok = False
    if not ok:
        _fail(field, value, "is not an IPv4 address")
    return ipaddress.IPv4Address(value)


def _cidr(field, value):
    """An address with its prefix length, e.g. ``203.0.113.2/24``."""
    try:
        iface = ipaddress.IPv4Interface(value) if isinstance(value, str) and "/" in value else None
    except ValueError:
        iface = None
    if iface is None or str(iface) != value:
        _fail(field, value, "is not an IPv4 address with prefix length (like 203.0.113.2/24)")
    _host_address(field, iface)
    return iface


def _host_address(field, iface):
    """Refuse a network or broadcast address as a host address."""
    net = iface.network
    if net.prefixlen < 31 and iface.ip in (net.network_address, net.broadcast_address):
        _fail(field, str(iface), f"is the network or broadcast address of {net}")


def _gateway(field, value, iface):
    gateway = _ipv4(field, value)
    if gateway not in iface.network or gateway == iface.ip:
        _fail(field, value, f"must be another address inside {iface.network}")
    return gateway


def _options(field, options, rendered):
    """Extra ifupdown options of one stanza: ``{key: value}``, sorted.

    Keys we render ourselves and the hook options (shell commands) are refused.
    """
    options = {} if options is None else options
    if not isinstance(options, dict):
        _fail(field, options, "must be a mapping of ifupdown option -> value")
    lines = []
    for key in sorted(options, key=str):
        value = options[key]
        if not isinstance(key, str) or not OPTION_KEY_RE.fullmatch(key):
            _fail(field, key, f"is not an ifupdown option name (must match {OPTION_KEY_RE.pattern})")
        norm = key.replace("-", "_")
        if norm in HOOK_OPTIONS:
            _fail(f"{field}.{key}", value, "is refused: ifupdown runs it as a shell command")
        if norm in STANZA_KEYWORDS or norm.startswith("allow_"):
            _fail(f"{field}.{key}", value, "is refused: ifupdown reads it as a stanza keyword")
        if norm in rendered or norm.startswith("bridge_") or norm.startswith("vlan_"):
            _fail(f"{field}.{key}", value, "is set by pairvm itself (use its own pillar key)")
        if isinstance(value, bool) or not isinstance(value, str | int) \
                or not OPTION_VALUE_RE.fullmatch(str(value)):
            _fail(f"{field}.{key}", value, f"must be a number or words matching {OPTION_VALUE_RE.pattern}")
        lines.append(f"{key} {value}")
    return lines


def _mtu(field, value):
    return None if value is None else _int(field, value, 68, 65535)


# --- ifupdown --------------------------------------------------------------------

def _link(field, link, address):
    """Stanza of the admin or the replication interface: ``(name, iface, lines)``."""
    link = _mapping(field, link, LINK_KEYS)
    if "interface" not in link:
        _fail(f"{field}.interface", None, "is missing")
    name = _ifname(f"{field}.interface", link["interface"])
    if "prefix" not in link:
        _fail(f"{field}.prefix", None, "is missing (the address comes from pillar pairvm:pair)")
    prefix = _int(f"{field}.prefix", link["prefix"], 1, 32)
    ip = _ipv4(f"{field} address (pairvm:pair)", address)
    iface = ipaddress.IPv4Interface(f"{ip}/{prefix}")
    _host_address(f"{field} address", iface)
    lines = [f"address {iface}"]
    if link.get("gateway") is not None:
        lines.append(f"gateway {_gateway(f'{field}.gateway', link['gateway'], iface)}")
    mtu = _mtu(f"{field}.mtu", link.get("mtu"))
    if mtu is not None:
        lines.append(f"mtu {mtu}")
    lines += _options(f"{field}.options", link.get("options"), ("address", "netmask", "gateway", "mtu"))
    return name, iface, ["inet static", *lines]


def _vlan(field, name, vlan):
    """``(raw_device, vlan_id, stanza lines)`` of a VLAN interface."""
    vlan = _mapping(field, vlan, VLAN_KEYS)
    raw = vlan.get("raw_device")
    dotted, plain = VLAN_DOTTED_RE.fullmatch(name), VLAN_PLAIN_RE.fullmatch(name)
    if dotted:
        vid = int(dotted[2])
        if raw is not None and raw != dotted[1]:
            _fail(f"{field}.raw_device", raw, f"differs from the raw device in the name {name!r}")
        raw, lines = dotted[1], []
    elif plain:
        vid = int(plain[1])
        if raw is None:
            _fail(f"{field}.raw_device", None, f"is missing (VLAN {name} needs its raw device, e.g. eth0)")
        lines = [f"vlan-raw-device {_ifname(f'{field}.raw_device', raw)}"]
    else:
        _fail(field, name, "is not a VLAN interface name: use <raw device>.<id> (eth0.1000) or "
                           "vlan<id> (vlan1000) with raw_device; ifupdown takes the VLAN id from the name")
    if not 1 <= vid <= 4094:
        _fail(field, name, "has a VLAN id outside 1..4094")
    _ifname(f"{field}.raw_device", raw)
    mtu = _mtu(f"{field}.mtu", vlan.get("mtu"))
    if mtu is not None:
        lines.append(f"mtu {mtu}")
    lines += _options(f"{field}.options", vlan.get("options"), ("address", "netmask", "gateway", "mtu"))
    return raw, vid, ["inet manual", *lines]


def _bridge(field, name, bridge):
    """``(ports, address or None, stanza lines)`` of the VM bridge."""
    bridge = _mapping(field, bridge, BRIDGE_KEYS)
    ports = bridge.get("ports") or []
    if not isinstance(ports, list):
        _fail(f"{field}.ports", ports, "must be a list of interface names")
    ports = [_ifname(f"{field}.ports", port) for port in ports]
    if len(set(ports)) != len(ports):
        _fail(f"{field}.ports", ports, "lists an interface twice")
    if name in ports:
        _fail(f"{field}.ports", ports, f"contains the bridge {name} itself")
    address, lines = None, []
    if bridge.get("address") is not None:
        address = _cidr(f"{field}.address", bridge["address"])
        lines.append(f"address {address}")
        if bridge.get("gateway") is not None:
            lines.append(f"gateway {_gateway(f'{field}.gateway', bridge['gateway'], address)}")
    elif bridge.get("gateway") is not None:
        _fail(f"{field}.gateway", bridge["gateway"], "needs bridge.address")
    lines.append(f"bridge_ports {' '.join(ports) if ports else 'none'}")
    stp = bridge.get("stp", False)
    if not isinstance(stp, bool):
        _fail(f"{field}.stp", stp, "must be true or false")
    lines.append(f"bridge_stp {'on' if stp else 'off'}")
    fd = bridge.get("fd")
    lines.append(f"bridge_fd {_int(f'{field}.fd', 0 if fd is None else fd, 0, 30)}")
    if bridge.get("maxwait") is not None:
        lines.append(f"bridge_maxwait {_int(f'{field}.maxwait', bridge['maxwait'], 0, 300)}")
    mtu = _mtu(f"{field}.mtu", bridge.get("mtu"))
    if mtu is not None:
        lines.append(f"mtu {mtu}")
    lines += _options(f"{field}.options", bridge.get("options"), ("address", "netmask", "gateway", "mtu"))
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
            _fail(f"network.{role}.interface", name, f"is also the {addressed[name][0]} interface")
        stanzas.append((name, what, lines))
        addressed[name] = (role, iface)
    if bridge_name in addressed:
        _fail("pairvm:bridge", bridge_name, f"is also the {addressed[bridge_name][0]} interface")
    if len(addressed) == 2:
        (_, one), (_, two) = addressed.values()
        if one.network.overlaps(two.network):
            _fail("network", f"{one.network} / {two.network}",
                  "admin and replication networks overlap: give them separate subnets")

    vlans = network.get("vlans") or {}
    if not isinstance(vlans, dict):
        _fail("network.vlans", vlans, "must be a mapping of VLAN interface name -> settings")
    ports, address, bridge_lines = _bridge("network.bridge", bridge_name, network.get("bridge"))
    for port in ports:
        if port in addressed:
            _fail("network.bridge.ports", port,
                  f"is the {addressed[port][0]} interface, which has an address: it cannot be a bridge port")
    for name in sorted(vlans):
        field = f"network.vlans.{name}"
        _ifname(field, name)
        if name in addressed or name == bridge_name:
            _fail(field, name, "is already used by another interface of this host")
        raw, vid, lines = _vlan(field, name, vlans[name])
        if raw == bridge_name or raw in ports:
            _fail(f"{field}.raw_device", raw, "is the bridge or one of its ports")
        role = f", a port of {bridge_name}" if name in ports else ""
        stanzas.append((name, f"VLAN {vid} on {raw}{role}", lines))
    if address is not None:
        for role, iface in addressed.values():
            if address.network.overlaps(iface.network):
                _fail("network.bridge.address", str(address), f"overlaps the {role} network {iface.network}")
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

        __utils__["pairvm_host.interfaces"](
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


# --- SSH -------------------------------------------------------------------------

def public_key(text, field="key"):
    """Parse and check one OpenSSH public key line ``TYPE BASE64 [COMMENT]``.

    Returns ``{"type", "key", "comment"}`` (comment None when absent or not a
    plain ``user@host`` word). The base64 blob must decode and name the same
    type, so no option, second key or newline can ride along.
    """
    if not isinstance(text, str) or "\n" in text.strip() or "\r" in text:
        _fail(field, text, "must be one OpenSSH public key line")
    parts = text.split()
    if len(parts) not in (2, 3) or parts[0] not in KEY_TYPES:
        _fail(field, text, f"must be 'TYPE BASE64 [COMMENT]' with TYPE one of {', '.join(KEY_TYPES)}")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        blob = b""
    size = int.from_bytes(blob[:4], "big") if len(blob) >= 4 else 0
    if blob[4:4 + size] != parts[0].encode() or len(blob) <= 4 + size:
        _fail(field, parts[1][:20] + "...", f"is not the base64 of a {parts[0]} key")
    comment = parts[2] if len(parts) == 3 and KEY_COMMENT_RE.fullmatch(parts[2]) else None
    return {"type": parts[0], "key": parts[1], "comment": comment}


def authorized_key_line(key, from_ip, options=("no-agent-forwarding", "no-port-forwarding",
                                                "no-X11-forwarding")):
    """One ``authorized_keys`` line: the key usable only from ``from_ip``.

    ``from="<ip>"`` plus the given restrictions (from ``KEY_OPTIONS``).

    Example:

    .. code-block:: python

        __utils__["pairvm_host.authorized_key_line"]("ssh-ed25519 AAAA... root@hostB", "192.0.2.12")
    """
    parsed = public_key(key)
    ip = _ipv4("from", from_ip)
    if isinstance(options, str) or not isinstance(options, list | tuple):
        _fail("key_options", options, "must be a list")
    for option in options:
        if option not in KEY_OPTIONS:
            _fail("key_options", option, f"is not one of {', '.join(KEY_OPTIONS)}")
    restrictions = ",".join([f'from="{ip}"', *dict.fromkeys(options)])
    comment = f" {parsed['comment']}" if parsed["comment"] else ""
    return f"{restrictions} {parsed['type']} {parsed['key']}{comment}"


# --- storage ---------------------------------------------------------------------

def pv_verdict(device, vg, probe):
    """May ``device`` become (or stay) a physical volume of volume group ``vg``?

    ``probe`` is what was found on the device (``pairvm_host.device_usage``):
    ``exists``, ``block`` (bools), ``signatures`` (``[{"type", "offset"}]``
    from wipefs), ``blkid`` (``{"TYPE", "PTTYPE", "USAGE", ...}`` from
    ``blkid -p``), ``pv`` (None when LVM does not list the device as a PV,
    else ``{"vg": name or ""}``), ``partitions``, ``holders`` (lists of names)
    and ``mounted`` (list of mount points or swap).

    Returns ``{"usable": bool, "state": "member" | "orphan" | "blank" |
    "refused", "reason": str}``. Never usable: a missing or non-block device,
    a filesystem or any other signature, a partition table, partitions, a PV of
    another volume group, an LVM signature LVM does not list, a device in use.
    """
    def refuse(reason):
        return {"usable": False, "state": "refused", "reason": f"{device} {reason}"}

    if not probe.get("exists"):
        return refuse("does not exist")
    if not probe.get("block"):
        return refuse("is not a block device")
    pv = probe.get("pv")
    if pv is not None and pv.get("vg") == vg:
        return {"usable": True, "state": "member", "reason": f"{device} is a physical volume of {vg}"}
    found = []
    if pv is not None and pv.get("vg"):
        found.append(f"a physical volume of volume group {pv['vg']}")
    blkid = probe.get("blkid") or {}
    signatures = [s for s in probe.get("signatures") or [] if s.get("type") != "LVM2_member"]
    lvm_signature = blkid.get("TYPE") == "LVM2_member" or any(
        s.get("type") == "LVM2_member" for s in probe.get("signatures") or [])
    if lvm_signature and pv is None:
        found.append("an LVM physical volume signature that LVM does not list "
                     "(filtered out by lvm.conf, or damaged metadata)")
    for sig in signatures:
        kind = "data"
        if sig.get("type") == blkid.get("PTTYPE"):
            kind = "partition table"
        elif sig.get("type") == blkid.get("TYPE") and blkid.get("USAGE"):
            kind = blkid["USAGE"]  # filesystem, raid, crypto, other
        found.append(f"{sig.get('type')} {kind} (signature at offset {sig.get('offset')})")
    if blkid.get("TYPE") and blkid["TYPE"] != "LVM2_member" and not signatures:
        found.append(f"{blkid['TYPE']} {blkid.get('USAGE') or 'data'}")
    if blkid.get("PTTYPE") and not any(s.get("type") == blkid["PTTYPE"] for s in signatures):
        found.append(f"{blkid['PTTYPE']} partition table")
    if blkid.get("AMBIVALENT"):
        found.append("several signatures (blkid: ambivalent result)")
    if probe.get("partitions"):
        found.append(f"partitions {', '.join(probe['partitions'])}")
    if probe.get("holders"):
        found.append(f"holders {', '.join(probe['holders'])} (in use)")
    if probe.get("mounted"):
        found.append(f"a mounted filesystem or swap ({', '.join(probe['mounted'])})")
    if found:
        return refuse("holds data: " + "; ".join(found))
    if pv is not None:
        return {"usable": True, "state": "orphan",
                "reason": f"{device} is a physical volume of no volume group yet"}
    return {"usable": True, "state": "blank", "reason": f"{device} is blank"}
