"""Render a pairvm VM record into DRBD 8.4 configuration and libvirt domain XML.

Pure functions over plain data (no I/O, standard library only). The VM record is the one of
``/machines/<vm>`` described in ``docs/data-model.md``.

Every value that reaches a rendered file is validated first: names, minion
ids, volume groups, bridges and DRBD tokens must match a strict pattern, ints
must be ints in range and addresses IPv4, so no input can inject drbd.conf
syntax (``;``, ``{``, ``}``, ``"``, whitespace). A bad value raises
``Invalid`` naming its field. XML is built with ElementTree, so free text
(kernel command line, paths) is escaped, and control characters, which XML 1.0
cannot carry, are rejected.
"""

import hashlib
import re
import xml.etree.ElementTree as ET

from pairvmlib import checks, layout, names

MINION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
VG_RE = re.compile(r"[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}")
MAC_RE = re.compile(r"[0-9a-f][02468ace](:[0-9a-f]{2}){5}", re.IGNORECASE)
TOKEN_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
SECRET_RE = re.compile(r"[A-Za-z0-9+/=._~-]{1,64}")
RATE_RE = re.compile(r"([1-9][0-9]{0,9})([KMG]?)")
DIGEST_RE = re.compile(r"[0-9a-f]{64}")
# Control characters (XML 1.0 cannot carry most of them), surrogates, non-characters.
NOT_TEXT_RE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")

XMLNS = "https://pairvm.invalid/xmlns/1"
DOMAIN_TYPES = ("kvm", "qemu")
CDROM_TARGET = "hdc"
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
HV_KEYS = ("kernel", "initrd", "cmdline", "machine", "cpu_model")
TIMING_OPTIONS = ("resync_rate", "c_plan_ahead", "connect_int")
DRBD_OPTIONS = TIMING_OPTIONS + ("shared_secret", "allow_two_primaries")
SPLIT_BRAIN = (
    "after-sb-0pri discard-zero-changes;",
    "after-sb-1pri disconnect;",
    "after-sb-2pri disconnect;",
)
# The split-brain handler records the resource where the drbd module looks.
SPLIT_BRAIN_HANDLER = (f'split-brain "mkdir -p {layout.SPLIT_BRAIN_DIR} && '
                       f'touch {layout.SPLIT_BRAIN_DIR}/$DRBD_RESOURCE";')
HEADER = "# Managed by Salt (pairvm): rendered from /machines. Local edits are overwritten."
UNITS = {"b": 1, "bytes": 1, "KB": 10**3, "k": 2**10, "KiB": 2**10, "MB": 10**6, "M": 2**20,
         "MiB": 2**20, "GB": 10**9, "G": 2**30, "GiB": 2**30, "TB": 10**12, "T": 2**40, "TiB": 2**40}


# --- validation ---------------------------------------------------------------

def _text(field, value):
    """Return ``value`` if it is a str free of control characters (XML-safe)."""
    if not isinstance(value, str) or NOT_TEXT_RE.search(value):
        checks.fail(field, value, "must be text without control characters")
    return value


def _path(field, value):
    """Return ``value`` if it is an absolute path without control characters."""
    if not _text(field, value).startswith("/"):
        checks.fail(field, value, "must be an absolute path")
    return value


def _section(record, key, field=None):
    """Return ``record[key]``, raising ValueError naming the field if absent."""
    if not isinstance(record, dict) or key not in record:
        checks.fail(field or key, None, "is missing")
    return record[key]


def _options(options, allowed):
    """Validate DRBD ``options`` (a dict or None) and return a normalized copy."""
    options = {} if options is None else options
    if not isinstance(options, dict):
        checks.fail("options", options, "must be a mapping")
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        checks.fail("options", unknown, f"are unknown (allowed: {', '.join(allowed)})")
    option_checks = {
        "resync_rate": _resync_rate,
        "c_plan_ahead": lambda f, v: checks.integer(f, v, 0, 300),
        "connect_int": lambda f, v: checks.integer(f, v, 1, 120),
        "shared_secret": _secret,
        "allow_two_primaries": _bool,
    }
    return {key: option_checks[key](f"options.{key}", value)
            for key, value in options.items() if value is not None}


def _secret(field, value):
    """Return a DRBD shared secret; the error never repeats the value."""
    if not isinstance(value, str) or not SECRET_RE.fullmatch(value):
        raise ValueError(f"{field}: (value hidden) must match {SECRET_RE.pattern}")
    return value


def _bool(field, value):
    """Return ``value`` if it is a bool."""
    if not isinstance(value, bool):
        checks.fail(field, value, "must be true or false")
    return value


def _resync_rate(field, value):
    """Return a resync rate as DRBD text: KiB/s int, or a string like ``100M``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(checks.integer(field, value, 1, 4194304))
    found = RATE_RE.fullmatch(value) if isinstance(value, str) else None
    kib = int(found[1]) * {"": 1, "K": 1, "M": 2**10, "G": 2**20}[found[2]] if found else 0
    if not 1 <= kib <= 4194304:
        checks.fail(field, value, "must be a rate of 1K..4G per second, e.g. 100M")
    return value


def _drbd_hosts(record):
    """Validate ``record["hosts"]`` for DRBD: two peers, sorted by minion id."""
    hosts = _section(record, "hosts")
    if not isinstance(hosts, dict) or len(hosts) != 2:
        checks.fail("hosts", hosts, "must map exactly two minion ids")
    result = []
    for minion in sorted(checks.match("hosts", minion, MINION_RE, "a minion id") for minion in hosts):
        field, host = f"hosts.{minion}", hosts[minion]
        result.append((
            minion,
            str(checks.ipv4(f"{field}.replication_ip",
                            _section(host, "replication_ip", f"{field}.replication_ip"))),
            checks.match(f"{field}.vg", _section(host, "vg", f"{field}.vg"), VG_RE, "a volume group name"),
        ))
    if result[0][1] == result[1][1]:
        checks.fail("hosts.*.replication_ip", result[0][1], "is used by both hosts")
    return result


# --- DRBD -----------------------------------------------------------------------

def _block(head, lines):
    """Render ``head { lines }`` as drbd.conf text lines, the body indented."""
    return [f"{head} {{", *(f"    {line}" for line in lines), "}"]


def _net_lines(options):
    """The ``net`` section's statements for validated ``options``."""
    lines = ["protocol C;"]
    if options.get("allow_two_primaries"):
        lines.append("allow-two-primaries yes;")
    lines.extend(SPLIT_BRAIN)
    if "connect_int" in options:
        lines.append(f"connect-int {options['connect_int']};")
    if "shared_secret" in options:
        lines += ["cram-hmac-alg sha1;", f"shared-secret \"{options['shared_secret']}\";"]
    return lines


def _disk_lines(options, on_io_error=True):
    """The ``disk`` section's statements (I/O error policy and resync control)."""
    lines = ["on-io-error detach;"] if on_io_error else []
    if "c_plan_ahead" in options:
        lines.append(f"c-plan-ahead {options['c_plan_ahead']};")
    if "resync_rate" in options:
        lines.append(f"resync-rate {options['resync_rate']};")
    return lines


def drbd_resource(record, options=None):
    """Render ``/etc/drbd.d/<name>.res`` (DRBD 8.4 syntax) for a VM record.

    The text is identical on both hosts: one ``on "<minion id>"`` section per
    host of ``record["hosts"]``, in sorted order (drbdadm matches it against
    ``uname -n``, so a minion id must be its host's node name), with device
    ``/dev/drbd<drbd_minor>``, disk ``/dev/<vg>/<name>``, address
    ``<replication_ip>:<drbd_port>`` and internal metadata. Protocol C, and
    split-brain policies that disconnect instead of discarding data (only a
    side without changes may be discarded). No ``global`` section: that is
    ``drbd_global_common``'s. Resource and host names are quoted, so a VM
    named like a drbd.conf keyword (``disk``, ``proxy``) parses; the names
    ``all``, ``common`` and ``global`` are refused (drbdadm reserves them).

    options (all optional):
        resync_rate: KiB/s int, or a string like ``"100M"`` (disk section)
        c_plan_ahead: int 0..300 (0 turns the dynamic resync controller off)
        connect_int: int 1..120 seconds (net section)
        shared_secret: peer authentication with ``cram-hmac-alg sha1``. The
            file then holds a secret: the caller must write it root-only,
            mode 0600.
        allow_two_primaries: bool, only for a live migration.

    Raises ValueError naming the field when a value is invalid.

    Example:

    .. code-block:: python

        render.drbd_resource(record, {"resync_rate": "100M"})
    """
    options = _options(options, DRBD_OPTIONS)
    name = checks.match("name", _section(record, "name"), names.VM_NAME_RE, "a VM name")
    if name in names.DRBD_RESERVED:
        checks.fail("name", name, f"is reserved by drbdadm ({', '.join(names.DRBD_RESERVED)})")
    port = checks.integer("drbd_port", _section(record, "drbd_port"), 1, 65535)
    minor = checks.integer("drbd_minor", _section(record, "drbd_minor"), 0, 1048575)
    body = _block("net", _net_lines(options)) + _block("disk", _disk_lines(options))
    for minion, address, vg in _drbd_hosts(record):
        body += _block(f'on "{minion}"', [
            f"device {layout.drbd_device(minor)};",
            f"disk /dev/{vg}/{name};",
            f"address {address}:{port};",
            "meta-disk internal;",
        ])
    return "\n".join([HEADER, *_block(f'resource "{name}"', body)]) + "\n"


def drbd_global_common(options=None):
    """Render ``/etc/drbd.d/global_common.conf`` (DRBD 8.4 syntax).

    ``global { usage-count no; }`` (otherwise the first ``drbdadm up`` stops at
    an interactive prompt) and a ``common`` section with protocol C and
    split-brain policies that never discard a side with changes, and a
    ``split-brain`` handler (run by the kernel through ``drbdadm split-brain
    minor-N`` when it drops a connection over an unresolved split brain) that
    creates ``/var/lib/pairvm/split-brain/<resource>``: the only way DRBD 8.4
    tells a split brain apart from a plain disconnect. The timing
    options of ``drbd_resource`` (``resync_rate``, ``c_plan_ahead``,
    ``connect_int``) are written here too when given; its per-resource options
    (``shared_secret``, ``allow_two_primaries``) are accepted, so one options
    mapping serves both functions, and are not written here.

    Example:

    .. code-block:: python

        render.drbd_global_common({"resync_rate": "100M", "c_plan_ahead": 0})
    """
    options = _options(options, DRBD_OPTIONS)
    timing = {key: value for key, value in options.items() if key in TIMING_OPTIONS}
    common = _block("net", _net_lines(timing))
    disk = _disk_lines(timing, on_io_error=False)
    if disk:
        common += _block("disk", disk)
    common += _block("handlers", [SPLIT_BRAIN_HANDLER])
    lines = [HEADER, "global {", "    usage-count no;", "}", *_block("common", common)]
    return "\n".join(lines) + "\n"


# --- libvirt --------------------------------------------------------------------

def _sub(parent, tag, text=None, **attrs):
    """Append ``<tag attrs>text</tag>`` to ``parent`` and return it."""
    element = ET.SubElement(parent, tag, {k.rstrip("_"): str(v) for k, v in attrs.items()})
    if text is not None:
        element.text = str(text)
    return element


def _hypervisor_options(record):
    """Validate ``record["hypervisor_options"]`` (None or a mapping) and return it."""
    hv = record.get("hypervisor_options") or {}
    if not isinstance(hv, dict):
        checks.fail("hypervisor_options", hv, "must be a mapping")
    unknown = sorted(set(hv) - set(HV_KEYS))
    if unknown:
        checks.fail("hypervisor_options", unknown, f"are unknown (allowed: {', '.join(HV_KEYS)})")
    hv = {key: value for key, value in hv.items() if value is not None}
    option_checks = {"kernel": _path, "initrd": _path, "cmdline": _text,
              "machine": lambda f, v: checks.match(f, v, TOKEN_RE, "a machine type"),
              "cpu_model": lambda f, v: checks.match(f, v, TOKEN_RE, "a CPU model")}
    hv = {key: option_checks[key](f"hypervisor_options.{key}", value) for key, value in hv.items()}
    for key in ("initrd", "cmdline"):
        if key in hv and "kernel" not in hv:
            checks.fail(f"hypervisor_options.{key}", hv[key], "needs hypervisor_options.kernel")
    return hv


def _domain_fields(record):
    """Validate the record fields the domain XML uses and return them."""
    name = checks.match("name", _section(record, "name"), names.VM_NAME_RE, "a VM name")
    domain_type = _section(record, "domain_type")
    if domain_type not in DOMAIN_TYPES:
        checks.fail("domain_type", domain_type, f"must be one of {', '.join(DOMAIN_TYPES)}")
    cdrom = record.get("cdrom")
    return {
        "name": name,
        "domain_type": domain_type,
        "home": checks.match("home", _section(record, "home"), MINION_RE, "a minion id"),
        "memory": checks.integer("memory", _section(record, "memory"), 1, 2**24),
        "vcpus": checks.integer("vcpus", record.get("vcpus", 1), 1, 64),
        "mac": checks.match("mac", _section(record, "mac"), MAC_RE, "a unicast MAC address").lower(),
        "bridge": checks.match("bridge", _section(record, "bridge"), names.IFNAME_RE, "an interface name"),
        "minor": checks.integer("drbd_minor", _section(record, "drbd_minor"), 0, 1048575),
        "vnc_port": 5900 + checks.integer("vnc_display", _section(record, "vnc_display"), 0, 65535 - 5900),
        "cdrom": None if cdrom is None else _path("cdrom", cdrom),
        "hv": _hypervisor_options(record),
    }


def _os(domain, hv):
    """``<os>``: machine type, then direct kernel boot or disc-then-cdrom boot."""
    os_ = _sub(domain, "os")
    _sub(os_, "type", "hvm", arch="x86_64", machine=hv.get("machine", "pc"))
    for key in ("kernel", "initrd", "cmdline"):
        if key in hv:
            _sub(os_, key, hv[key])
    if "kernel" not in hv:
        _sub(os_, "boot", dev="hd")
        _sub(os_, "boot", dev="cdrom")


def _metadata(domain, home, digest):
    """``<metadata>`` with the pairvm element: the VM's home and record digest."""
    vm = _sub(_sub(domain, "metadata"), "pairvm:vm", **{"xmlns:pairvm": XMLNS})
    _sub(vm, "pairvm:home", home)
    if digest is not None:
        _sub(vm, "pairvm:digest", checks.match("options.digest", digest, DIGEST_RE, "a sha256 hex digest"))


def _discs(devices, vm):
    """The DRBD disc (virtio, no host cache) and the always-present IDE cdrom."""
    disk = _sub(devices, "disk", type_="block", device="disk")
    _sub(disk, "driver", name="qemu", type_="raw", cache="none")
    _sub(disk, "source", dev=layout.drbd_device(vm["minor"]))
    _sub(disk, "target", dev="vda", bus="virtio")
    devices.append(_cdrom(vm["cdrom"]))


def _cdrom(path):
    """The IDE cdrom ``hdc``: with ``path`` as its medium, or empty for None."""
    cdrom = ET.Element("disk", type="file", device="cdrom")
    _sub(cdrom, "driver", name="qemu", type_="raw")
    if path is not None:
        _sub(cdrom, "source", file=path)
    _sub(cdrom, "target", dev=CDROM_TARGET, bus="ide")
    _sub(cdrom, "readonly")
    return cdrom


def cdrom_xml(path=None):
    """The XML of the VM's cdrom device holding ``path`` (None: empty), the same
    element ``domain_xml`` renders, for changing the medium of a running domain
    (libvirt's ``updateDeviceFlags``). Raises ``Invalid`` for a path that is not
    absolute or holds control characters.

    Example:

    .. code-block:: python

        dom.updateDeviceFlags(render.cdrom_xml("/srv/iso/debian.iso"), libvirt.VIR_DOMAIN_AFFECT_LIVE)
    """
    cdrom = _cdrom(None if path is None else _path("cdrom", path))
    return ET.tostring(cdrom, encoding="unicode")


def _consoles(devices, vm, serial_log_dir):
    """VNC on loopback only, and a pty serial console logged to a file."""
    graphics = _sub(devices, "graphics", type_="vnc", port=vm["vnc_port"], autoport="no",
                    listen="127.0.0.1")
    _sub(graphics, "listen", type_="address", address="127.0.0.1")
    serial = _sub(devices, "serial", type_="pty")
    _sub(serial, "log", file=f"{serial_log_dir.rstrip('/')}/{vm['name']}-serial.log", append="on")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type_="pty")
    _sub(console, "target", type_="serial", port="0")


def _devices(domain, vm, serial_log_dir):
    """``<devices>``: discs, bridged virtio NIC, consoles, no balloon."""
    devices = _sub(domain, "devices")
    _discs(devices, vm)
    interface = _sub(devices, "interface", type_="bridge")
    _sub(interface, "mac", address=vm["mac"])
    _sub(interface, "source", bridge=vm["bridge"])
    _sub(interface, "target", dev=f"vm-{vm['name']}")
    _sub(interface, "model", type_="virtio")
    _consoles(devices, vm, serial_log_dir)
    _sub(devices, "memballoon", model="none")


def domain_xml(record, serial_log_dir=layout.SERIAL_LOG_DIR, options=None):
    """Render the libvirt domain XML of a VM record.

    Domain type from the record (``kvm`` or ``qemu``), memory in MiB, vCPUs,
    machine type (default ``pc``), direct kernel boot when
    ``hypervisor_options`` has a kernel (else boot from the disc, then the
    cdrom), the DRBD device ``/dev/drbd<minor>`` as virtio disc ``vda``, an
    IDE cdrom ``hdc`` that is always present (an ISO can be inserted into the
    running VM later), a bridged virtio NIC with tap ``vm-<name>``, VNC on
    127.0.0.1 port 5900+display, a pty serial console logged to
    ``<serial_log_dir>/<name>-serial.log``, no memory balloon. A guest
    poweroff, reboot or crash stops the domain (``destroy``): pairvm, not
    libvirt, decides where a VM runs. ``<metadata>`` holds the VM's home and,
    when ``options["digest"]`` is given (see ``machines_digest``), the digest
    of its ``/machines`` file. ``options["uuid"]`` keeps the UUID of a domain
    that is defined already (libvirt refuses to redefine a name with another).

    To detect drift, compare ``domain_summary`` of this XML with
    ``domain_summary`` of the defined domain's XMLDesc.

    Raises ``Invalid`` naming the field when a value is invalid.

    Example:

    .. code-block:: python

        conn.defineXML(render.domain_xml(record, options={"uuid": dom.UUIDString()}))
    """
    options = {} if options is None else options
    if not isinstance(options, dict) or set(options) - {"digest", "uuid"}:
        checks.fail("options", options, "may only have the keys digest and uuid")
    vm = _domain_fields(record)
    _path("serial_log_dir", serial_log_dir)
    domain = ET.Element("domain", type=vm["domain_type"])
    _sub(domain, "name", vm["name"])
    if options.get("uuid") is not None:
        _sub(domain, "uuid", checks.match("options.uuid", options["uuid"], UUID_RE, "a UUID"))
    _metadata(domain, vm["home"], options.get("digest"))
    _sub(domain, "memory", vm["memory"], unit="MiB")
    _sub(domain, "vcpu", vm["vcpus"])
    _os(domain, vm["hv"])
    features = _sub(domain, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    if "cpu_model" in vm["hv"]:
        _sub(_sub(domain, "cpu", mode="custom"), "model", vm["hv"]["cpu_model"])
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        _sub(domain, event, "destroy")
    _devices(domain, vm, serial_log_dir)
    ET.indent(domain)
    return ET.tostring(domain, encoding="unicode") + "\n"


# --- reading back -----------------------------------------------------------------

def _mib(element):
    """Convert a libvirt ``<memory unit=...>`` element to whole MiB (None if absent)."""
    if element is None or element.text is None:
        return None
    unit = element.get("unit", "KiB")
    if unit not in UNITS:
        raise ValueError(f"memory: unknown unit {unit!r}")
    return int(element.text.strip()) * UNITS[unit] // 2**20


def _attr(root, path, name):
    """Attribute ``name`` of the first element at ``path`` (None if absent)."""
    element = root.find(path)
    return None if element is None else element.get(name)


def _int_or_none(text):
    """``int(text)``, or None when the text is absent."""
    return None if text is None else int(text.strip())


def _vnc_listen(graphics):
    """The VNC listen address: the attribute, else the first address listen."""
    if graphics is None:
        return None
    listen = graphics.find("listen[@type='address']")
    return graphics.get("listen") or (listen.get("address") if listen is not None else None)


def domain_summary(xml_text):
    """Parse a domain XML (e.g. libvirt's XMLDesc) into its comparable fields.

    Returns ``{name, memory_mib, vcpus, disk, mac, bridge, vnc_port,
    vnc_listen, cdrom, domain_type, on_reboot}``; an absent element gives
    None. ``disk`` is the source device of the first disc, ``cdrom`` the
    source file of the first cdrom (None when empty). Compare
    ``domain_summary(domain_xml(record))`` with the summary of the defined
    domain to detect drift. Raises ValueError on malformed XML.

    Example:

    .. code-block:: python

        render.domain_summary(dom.XMLDesc(0))
    """
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        raise ValueError(f"xml_text: not well-formed XML: {exc}") from exc
    if root.tag != "domain":
        raise ValueError(f"xml_text: root element is {root.tag!r}, not 'domain'")
    graphics = root.find("devices/graphics[@type='vnc']")
    mac = _attr(root, "devices/interface/mac", "address")
    return {
        "name": root.findtext("name"),
        "memory_mib": _mib(root.find("memory")),
        "vcpus": _int_or_none(root.findtext("vcpu")),
        "disk": _attr(root, "devices/disk[@device='disk']/source", "dev"),
        "mac": mac.lower() if mac else None,
        "bridge": _attr(root, "devices/interface[@type='bridge']/source", "bridge"),
        "vnc_port": _int_or_none(_attr(root, "devices/graphics[@type='vnc']", "port")),
        "vnc_listen": _vnc_listen(graphics),
        "cdrom": _attr(root, "devices/disk[@device='cdrom']/source", "file"),
        "domain_type": root.get("type"),
        "on_reboot": root.findtext("on_reboot"),
    }


def machines_digest(text):
    """Return the sha256 hex digest of a ``/machines`` file's bytes.

    ``text`` is the file's bytes, or its text (encoded as UTF-8).

    Example:

    .. code-block:: python

        render.machines_digest(open("/machines/vm1", "rb").read())
    """
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    return hashlib.sha256(data).hexdigest()
