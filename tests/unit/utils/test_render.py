"""pairvmlib.render: DRBD 8.4 files and libvirt domain XML from a VM record.

Pure functions, so no loader mocking: structure, validation (nothing from the
record can inject drbd.conf syntax or break the XML), determinism, and the
domain_summary round trip. The real drbdadm / virsh checks are in
tests/functional/test_render_real_tools.py.
"""

import ast
import copy
import hashlib
import inspect
import re
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from pairvmlib import render
from tests.unit.conftest import REPO

TIMING = {"resync_rate": "100M", "c_plan_ahead": 0, "connect_int": 2}
XMLNS = "https://pairvm.invalid/xmlns/1"


@pytest.fixture(scope="module", autouse=True)
def hypothesis_home(tmp_path_factory):
    """Keep hypothesis' caches (its unicode tables) out of the work tree."""
    set_hypothesis_home_dir(tmp_path_factory.mktemp("hypothesis"))
    yield
    set_hypothesis_home_dir(None)


def sample_record(**changes):
    """A resolved VM record as /machines/<vm> holds it (docs/data-model.md)."""
    record = {
        "name": "web-1",
        "home": "hostA",
        "peer": "hostB",
        "memory": 256,
        "vcpus": 2,
        "disc_mib": 1024,
        "ip": "203.0.113.20",
        "prefix": 24,
        "gateway": "203.0.113.1",
        "mac": "52:54:00:0a:0b:0c",
        "bridge": "br0",
        "drbd_port": 7803,
        "drbd_minor": 3,
        "vnc_display": 7,
        "state": "running",
        "suppress": False,
        "domain_type": "qemu",
        "hypervisor_options": {},
        "cdrom": None,
        "hosts": {
            "hostB": {"admin_ip": "10.77.0.12", "replication_ip": "10.78.0.12", "vg": "there"},
            "hostA": {"admin_ip": "10.77.0.11", "replication_ip": "10.78.0.11", "vg": "here"},
        },
    }
    record.update(changes)
    return record


def with_host(field, value, host="hostA"):
    """The sample record with ``hosts[host][field]`` replaced."""
    record = sample_record()
    record["hosts"][host][field] = value
    return record


def sections(text):
    """The statements of a drbd.conf text, one stripped line each, comments dropped."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def block(text, head):
    """The statements inside the first ``head {`` ... matching ``}`` of a drbd.conf text."""
    lines = sections(text)
    start = lines.index(f"{head} {{") + 1
    depth, end = 1, start
    while depth:
        depth += lines[end].endswith("{") - (lines[end] == "}")
        end += 1
    return lines[start:end - 1]


# --- module shape -----------------------------------------------------------------

def test_module_is_pure_and_exposes_only_its_renderers():
    tree = ast.parse((REPO / "_utils/pairvmlib/render.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {f"{node.module}.{alias.name}" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                 for alias in node.names}
    # the standard library and the library's other pure modules: no I/O, no Salt
    assert imported == {"hashlib", "re", "xml.etree.ElementTree", "pairvmlib.checks", "pairvmlib.layout",
                        "pairvmlib.names"}
    public = {name for name, obj in vars(render).items()
              if inspect.isfunction(obj) and not name.startswith("_") and obj.__module__ == render.__name__}
    assert public == {"drbd_resource", "drbd_global_common", "domain_xml", "domain_summary",
                      "machines_digest", "cdrom_xml"}
    for name in public:
        doc = inspect.getdoc(getattr(render, name))
        assert "Example:" in doc, name


# --- DRBD resource --------------------------------------------------------------

def test_resource_has_net_disk_and_one_on_section_per_host_in_sorted_order():
    text = render.drbd_resource(sample_record())
    lines = sections(text)
    assert lines[0] == 'resource "web-1" {' and lines[-1] == "}"
    assert block(text, "net") == ["protocol C;", "after-sb-0pri discard-zero-changes;",
                                  "after-sb-1pri disconnect;", "after-sb-2pri disconnect;"]
    assert block(text, "disk") == ["on-io-error detach;"]
    assert block(text, 'on "hostA"') == ["device /dev/drbd3;", "disk /dev/here/web-1;",
                                         "address 10.78.0.11:7803;", "meta-disk internal;"]
    assert block(text, 'on "hostB"') == ["device /dev/drbd3;", "disk /dev/there/web-1;",
                                         "address 10.78.0.12:7803;", "meta-disk internal;"]
    assert text.index('on "hostA"') < text.index('on "hostB"')


def test_resource_never_has_a_global_section_or_a_discarding_policy_or_two_primaries():
    text = render.drbd_resource(sample_record())
    assert "global" not in text and "usage-count" not in text
    assert not re.search(r"discard-(least|younger|older|local|remote)|violently|discard-secondary", text)
    assert "allow-two-primaries" not in text
    assert "shared-secret" not in text and "cram-hmac-alg" not in text
    assert text.endswith("}\n") and text.count("{") == text.count("}") == 5


def test_resource_timing_options_go_to_net_and_disk():
    text = render.drbd_resource(sample_record(), TIMING)
    assert "connect-int 2;" in block(text, "net")
    assert block(text, "disk") == ["on-io-error detach;", "c-plan-ahead 0;", "resync-rate 100M;"]


def test_resource_resync_rate_may_be_kib_per_second():
    assert "resync-rate 4096;" in render.drbd_resource(sample_record(), {"resync_rate": 4096})


def test_resource_shared_secret_adds_hmac_and_docstring_says_0600():
    text = render.drbd_resource(sample_record(), {"shared_secret": "Zm9v+bar/baz="})
    net = block(text, "net")
    assert net[-2:] == ["cram-hmac-alg sha1;", 'shared-secret "Zm9v+bar/baz=";']
    assert "0600" in render.drbd_resource.__doc__


@pytest.mark.parametrize("value, present", [(True, True), (False, False), (None, False)])
def test_resource_allows_two_primaries_only_when_asked(value, present):
    text = render.drbd_resource(sample_record(), {"allow_two_primaries": value})
    assert ("allow-two-primaries yes;" in block(text, "net")) is present


def test_resource_text_is_deterministic_and_independent_of_host_order():
    record = sample_record()
    reordered = copy.deepcopy(record)
    reordered["hosts"] = dict(reversed(list(record["hosts"].items())))
    first = render.drbd_resource(record, TIMING)
    assert render.drbd_resource(record, TIMING) == first
    assert render.drbd_resource(reordered, dict(reversed(list(TIMING.items())))) == first


@pytest.mark.parametrize("field, value", [
    ("name", "web;1"), ("name", "web}"), ("name", "web\n"), ("name", "web-1\n"), ("name", 'a"b'),
    ("name", "Web"), ("name", "1web"), ("name", "a" * 13), ("name", ""), ("name", None),
    ("drbd_port", "7803"), ("drbd_port", True), ("drbd_port", 70000), ("drbd_port", 0),
    ("drbd_port", 7803.0), ("drbd_minor", -1), ("drbd_minor", "3"), ("drbd_minor", 2**20),
])
def test_resource_rejects_bad_record_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"^{field}: "):
        render.drbd_resource(sample_record(**{field: value}))


@pytest.mark.parametrize("field, value", [
    ("replication_ip", "10.78.0.11;"), ("replication_ip", "10.78.0.11 } on x {"),
    ("replication_ip", "10.78.0.256"), ("replication_ip", "010.78.0.11"), ("replication_ip", "::1"),
    ("replication_ip", "10.78.0.11\n"), ("replication_ip", 174981131), ("replication_ip", None),
    ("vg", "here;"), ("vg", "here}"), ("vg", "he re"), ("vg", "-here"), ("vg", 'h"'), ("vg", ""),
])
def test_resource_rejects_bad_host_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"^hosts\.hostA\.{field}: "):
        render.drbd_resource(with_host(field, value))


@pytest.mark.parametrize("minion", ["host;A", "host}", "host A", "hostA\n", '"hostA"', "-hostA", "", 7, None])
def test_resource_rejects_bad_minion_ids(minion):
    record = sample_record()
    record["hosts"][minion] = record["hosts"].pop("hostA")
    with pytest.raises(ValueError, match=r"^hosts: "):
        render.drbd_resource(record)


@pytest.mark.parametrize("name", ["all", "common", "global"])
def test_resource_refuses_names_drbdadm_reserves(name):
    with pytest.raises(ValueError, match=rf"^name: '{name}' is reserved"):
        render.drbd_resource(sample_record(name=name))
    assert render.domain_summary(render.domain_xml(sample_record(name=name)))["name"] == name


def test_resource_needs_exactly_two_hosts_with_distinct_addresses():
    record = sample_record()
    del record["hosts"]["hostB"]
    with pytest.raises(ValueError, match="exactly two"):
        render.drbd_resource(record)
    record = sample_record()
    record["hosts"]["hostC"] = dict(record["hosts"]["hostA"], replication_ip="10.78.0.13")
    with pytest.raises(ValueError, match="exactly two"):
        render.drbd_resource(record)
    with pytest.raises(ValueError, match="used by both hosts"):
        render.drbd_resource(with_host("replication_ip", "10.78.0.12"))
    record = sample_record()
    del record["hosts"]["hostB"]["vg"]
    with pytest.raises(ValueError, match=r"^hosts\.hostB\.vg: None is missing"):
        render.drbd_resource(record)


@pytest.mark.parametrize("options, field", [
    ({"shared_secret": 'ab"c'}, "shared_secret"), ({"shared_secret": "a b"}, "shared_secret"),
    ({"shared_secret": "a;b"}, "shared_secret"), ({"shared_secret": "x" * 65}, "shared_secret"),
    ({"shared_secret": "a\nb"}, "shared_secret"), ({"resync_rate": "100M;"}, "resync_rate"),
    ({"resync_rate": "0"}, "resync_rate"), ({"resync_rate": "5G"}, "resync_rate"),
    ({"resync_rate": "100m"}, "resync_rate"), ({"resync_rate": True}, "resync_rate"),
    ({"c_plan_ahead": 301}, "c_plan_ahead"), ({"c_plan_ahead": "0"}, "c_plan_ahead"),
    ({"connect_int": 0}, "connect_int"), ({"allow_two_primaries": "yes"}, "allow_two_primaries"),
])
def test_resource_rejects_bad_options_naming_the_option(options, field):
    with pytest.raises(ValueError, match=rf"^options\.{field}: "):
        render.drbd_resource(sample_record(), options)


def test_a_bad_secret_is_not_repeated_in_the_error():
    with pytest.raises(ValueError) as raised:
        render.drbd_resource(sample_record(), {"shared_secret": "hunter2 leaked"})
    assert "hunter2" not in str(raised.value) and "shared_secret" in str(raised.value)


def test_unknown_options_are_rejected():
    with pytest.raises(ValueError, match="unknown"):
        render.drbd_resource(sample_record(), {"resync-rate": "100M"})
    with pytest.raises(ValueError, match="mapping"):
        render.drbd_global_common(["resync_rate"])


UNSAFE = set(';{}"#\\\n\r\t ')
# Near-valid text (often accepted) mixed with any text.
NEAR_VALID = st.text(alphabet=st.sampled_from('az09-._+/=;{}"# \n\tA'), max_size=14) | st.text()


def given_field(field, value):
    """(record, options) of the sample with ``value`` put in ``field``."""
    record, options = sample_record(), {}
    if field == "name":
        record["name"] = value
    elif field == "minion":
        record["hosts"][value] = record["hosts"].pop("hostA")
    elif field == "shared_secret":
        options["shared_secret"] = value
    else:
        record["hosts"]["hostA"][field] = value
    return record, options


@settings(max_examples=400, deadline=None, database=None)
@given(field=st.sampled_from(["name", "minion", "vg", "replication_ip", "shared_secret"]), value=NEAR_VALID)
def test_no_input_text_can_inject_drbd_syntax(field, value):
    record, options = given_field(field, value)
    try:
        text = render.drbd_resource(record, options)
    except ValueError as exc:
        # refused: for the field it was given to, not for anything else
        assert str(exc).startswith(REFUSED_AS[field]), (field, value, exc)
        return
    assert not UNSAFE & set(value)
    assert len(sections(text)) == len(sections(render.drbd_resource(sample_record(), options)))


# How drbd_resource names the field a bad value of the property test above was given to.
REFUSED_AS = {"name": "name: ", "minion": "hosts: ", "vg": "hosts.hostA.vg: ",
              "replication_ip": "hosts.hostA.replication_ip: ", "shared_secret": "options.shared_secret: "}


@pytest.mark.parametrize("field, value", [
    ("name", "web-2"), ("minion", "host-a.example.org"), ("vg", "vg_here-1"),
    ("replication_ip", "10.78.0.21"), ("shared_secret", "Zx9+/=abc"),
])
def test_near_valid_values_of_the_property_test_are_accepted(field, value):
    """The positive control of the property test: valid values of each field render."""
    assert value in render.drbd_resource(*given_field(field, value))


# --- DRBD global_common -------------------------------------------------------------

def test_global_common_has_usage_count_no_and_safe_common_net():
    text = render.drbd_global_common()
    assert block(text, "global") == ["usage-count no;"]
    assert block(text, "net") == ["protocol C;", "after-sb-0pri discard-zero-changes;",
                                  "after-sb-1pri disconnect;", "after-sb-2pri disconnect;"]
    assert "resource" not in text and "disk {" not in text
    # the kernel runs `drbdadm split-brain minor-N`: the handler marks the resource
    assert block(text, "handlers") == [
        'split-brain "mkdir -p /var/lib/pairvm/split-brain && '
        'touch /var/lib/pairvm/split-brain/$DRBD_RESOURCE";']


def test_global_common_writes_timing_but_not_per_resource_options():
    text = render.drbd_global_common(dict(TIMING, shared_secret="s3cret", allow_two_primaries=True))
    assert "connect-int 2;" in block(text, "net")
    assert block(text, "disk") == ["c-plan-ahead 0;", "resync-rate 100M;"]
    assert "s3cret" not in text and "allow-two-primaries" not in text
    assert render.drbd_global_common(TIMING) == text


# --- domain XML -----------------------------------------------------------------------

def parse(record=None, **kwargs):
    """Render the domain XML of ``record`` (default the sample) and parse it."""
    return ET.fromstring(render.domain_xml(record or sample_record(), **kwargs))


def test_domain_has_the_vm_identity_and_size():
    root = parse()
    assert root.tag == "domain" and root.get("type") == "qemu"
    assert root.findtext("name") == "web-1"
    assert (root.find("memory").get("unit"), root.findtext("memory")) == ("MiB", "256")
    assert root.findtext("vcpu") == "2"
    assert [el.tag for el in root.find("features")] == ["acpi", "apic"]
    assert root.find("cpu") is None
    assert parse(sample_record(domain_type="kvm")).get("type") == "kvm"


def test_domain_boots_from_disc_then_cdrom_without_a_kernel():
    os_ = parse().find("os")
    assert os_.find("type").attrib == {"arch": "x86_64", "machine": "pc"} and os_.findtext("type") == "hvm"
    assert [b.get("dev") for b in os_.findall("boot")] == ["hd", "cdrom"]
    assert os_.find("kernel") is None


def test_domain_direct_kernel_boot_machine_and_cpu_model():
    hv = {"kernel": "/srv/vmlinuz", "initrd": "/srv/initrd.img", "cmdline": "console=ttyS0 quiet",
          "machine": "pc-i440fx-7.2", "cpu_model": "qemu64"}
    root = parse(sample_record(hypervisor_options=hv))
    os_ = root.find("os")
    assert os_.find("type").get("machine") == "pc-i440fx-7.2"
    assert [(el.tag, el.text) for el in os_][1:] == [
        ("kernel", "/srv/vmlinuz"), ("initrd", "/srv/initrd.img"), ("cmdline", "console=ttyS0 quiet")]
    assert root.find("cpu").attrib == {"mode": "custom"} and root.findtext("cpu/model") == "qemu64"


def test_a_guest_halt_reboot_or_crash_stops_the_domain():
    root = parse()
    assert [root.findtext(e) for e in ("on_poweroff", "on_reboot", "on_crash")] == ["destroy"] * 3


def test_domain_disc_is_the_drbd_device_and_the_cdrom_is_always_there():
    devices = parse().find("devices")
    disc, cdrom = devices.findall("disk")
    assert disc.attrib == {"type": "block", "device": "disk"}
    assert disc.find("driver").attrib == {"name": "qemu", "type": "raw", "cache": "none"}
    assert disc.find("source").attrib == {"dev": "/dev/drbd3"}
    assert disc.find("target").attrib == {"dev": "vda", "bus": "virtio"}
    assert cdrom.attrib == {"type": "file", "device": "cdrom"}
    assert cdrom.find("target").attrib == {"dev": "hdc", "bus": "ide"}
    assert cdrom.find("source") is None and cdrom.find("readonly") is not None
    loaded = parse(sample_record(cdrom="/srv/iso/d&b <1>.iso")).find("devices/disk[@device='cdrom']")
    assert loaded.find("source").get("file") == "/srv/iso/d&b <1>.iso"


def test_domain_nic_consoles_and_no_balloon():
    devices = parse().find("devices")
    nic = devices.find("interface")
    assert nic.get("type") == "bridge"
    assert [(el.tag, el.attrib) for el in nic] == [
        ("mac", {"address": "52:54:00:0a:0b:0c"}), ("source", {"bridge": "br0"}),
        ("target", {"dev": "vm-web-1"}), ("model", {"type": "virtio"})]
    assert devices.find("serial").attrib == {"type": "pty"}
    assert devices.find("serial/log").attrib == {"file": "/var/log/libvirt/qemu/web-1-serial.log",
                                                 "append": "on"}
    assert devices.find("serial/target").attrib == {"port": "0"}
    assert devices.find("console/target").attrib == {"type": "serial", "port": "0"}
    assert devices.find("memballoon").attrib == {"model": "none"}
    log = parse(serial_log_dir="/srv/logs/").find("devices/serial/log").get("file")
    assert log == "/srv/logs/web-1-serial.log"


def test_vnc_listens_on_loopback_only_at_5900_plus_display():
    root = parse()
    graphics = root.findall("devices/graphics")
    assert len(graphics) == 1
    assert graphics[0].attrib == {"type": "vnc", "port": "5907", "autoport": "no", "listen": "127.0.0.1"}
    assert [el.attrib for el in graphics[0]] == [{"type": "address", "address": "127.0.0.1"}]
    addresses = [v for el in root.iter() for k, v in el.attrib.items() if k in ("listen", "address")]
    assert set(addresses) - {"52:54:00:0a:0b:0c"} == {"127.0.0.1"}


def test_metadata_holds_home_and_the_digest_when_given():
    digest = render.machines_digest("name: 'web-1'\n")
    root = parse(options={"digest": digest})
    vm = root.find(f"metadata/{{{XMLNS}}}vm")
    assert vm.findtext(f"{{{XMLNS}}}home") == "hostA"
    assert vm.findtext(f"{{{XMLNS}}}digest") == digest
    assert parse().find(f"metadata/{{{XMLNS}}}vm/{{{XMLNS}}}digest") is None
    with pytest.raises(ValueError, match=r"^options\.digest: "):
        render.domain_xml(sample_record(), options={"digest": "abc"})
    with pytest.raises(ValueError, match=r"^options: "):
        render.domain_xml(sample_record(), options={"colour": "x"})


def test_a_given_uuid_is_the_domains_and_a_bad_one_is_refused():
    uuid = "6f0c9e4e-0000-4000-8000-000000000001"
    root = parse(options={"uuid": uuid})
    assert root.findtext("uuid") == uuid
    assert [child.tag for child in root][:2] == ["name", "uuid"]
    assert parse().find("uuid") is None
    with pytest.raises(ValueError, match=r"^options\.uuid: "):
        render.domain_xml(sample_record(), options={"uuid": "6f0c9e4e</uuid><x>"})


def test_the_cdrom_device_is_the_one_the_domain_has():
    domain = parse(record=dict(sample_record(), cdrom="/srv/iso/a'b\"c.iso"))
    cdrom = domain.find("devices/disk[@device='cdrom']")
    alone = ET.fromstring(render.cdrom_xml("/srv/iso/a'b\"c.iso"))
    assert [(e.tag, e.attrib) for e in alone.iter()] == [(e.tag, e.attrib) for e in cdrom.iter()]
    empty = ET.fromstring(render.cdrom_xml())
    assert empty.find("source") is None and empty.find("target").get("dev") == "hdc"
    with pytest.raises(ValueError, match=r"^cdrom: "):
        render.cdrom_xml("relative.iso")


def test_a_cmdline_with_markup_is_escaped_not_interpreted():
    evil = "console=ttyS0 </cmdline><devices><disk type='file'/></devices><cmdline>&x;"
    hv = {"kernel": "/srv/vmlinuz", "cmdline": evil}
    text = render.domain_xml(sample_record(hypervisor_options=hv))
    assert "&lt;/cmdline&gt;&lt;devices&gt;" in text and "&amp;x;" in text
    root = ET.fromstring(text)
    assert root.findtext("os/cmdline") == evil
    assert len(root.findall("devices")) == 1 and len(root.findall("devices/disk")) == 2


@pytest.mark.parametrize("field, value", [
    ("name", "web;1"), ("name", "web}"), ("name", "web\n"), ("name", "web</name>"),
    ("bridge", "br0;"), ("bridge", "br0}"), ("bridge", "br0\n"), ("bridge", "br0'/><x a='"),
    ("bridge", "bridge-too-long0"), ("bridge", ""), ("mac", "52:54:00:0a:0b"), ("mac", "53:54:00:0a:0b:0c"),
    ("mac", "52:54:00:0a:0b:0c\n"), ("mac", "52-54-00-0a-0b-0c"), ("memory", 0), ("memory", "256"),
    ("vcpus", 65), ("vcpus", True), ("vnc_display", -1), ("vnc_display", 60000), ("drbd_minor", "3"),
    ("domain_type", "xen"), ("home", "host A"), ("cdrom", "relative.iso"), ("cdrom", "/a\nb.iso"),
    ("hypervisor_options", "kernel=/x"),
])
def test_domain_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"^{field}: "):
        render.domain_xml(sample_record(**{field: value}))


@pytest.mark.parametrize("hv, field", [
    ({"kernel": "vmlinuz"}, "kernel"), ({"kernel": "/k", "cmdline": "a\x1bb"}, "cmdline"),
    ({"kernel": "/k", "cmdline": "a\x00b"}, "cmdline"), ({"kernel": "/k", "cmdline": "a\nb"}, "cmdline"),
    ({"initrd": "/i"}, "initrd"), ({"cmdline": "quiet"}, "cmdline"), ({"machine": "pc'"}, "machine"),
    ({"cpu_model": "host passthrough"}, "cpu_model"), ({"bios": "/x"}, ""),
])
def test_domain_rejects_bad_hypervisor_options(hv, field):
    with pytest.raises(ValueError, match=rf"^hypervisor_options\.?{field}"):
        render.domain_xml(sample_record(hypervisor_options=hv))


def test_domain_rejects_a_relative_serial_log_dir():
    with pytest.raises(ValueError, match=r"^serial_log_dir: "):
        render.domain_xml(sample_record(), serial_log_dir="logs")


def test_domain_xml_is_deterministic_and_takes_an_upper_case_mac():
    record = sample_record(cdrom="/srv/a.iso")
    first = render.domain_xml(record)
    assert render.domain_xml(dict(reversed(list(record.items())))) == first
    assert render.domain_xml(sample_record(cdrom="/srv/a.iso", mac="52:54:00:0A:0B:0C")) == first


@settings(max_examples=300, deadline=None, database=None)
@given(cmdline=st.text())
def test_any_cmdline_is_rejected_or_survives_the_xml_round_trip(cmdline):
    hv = {"kernel": "/srv/vmlinuz", "cmdline": cmdline}
    try:
        text = render.domain_xml(sample_record(hypervisor_options=hv))
    except ValueError:
        assert re.search("[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]", cmdline)
        return
    assert ET.fromstring(text).findtext("os/cmdline") == cmdline


# --- domain_summary -------------------------------------------------------------------

def expected_summary(record):
    return {
        "name": record["name"], "memory_mib": record["memory"], "vcpus": record["vcpus"],
        "disk": f"/dev/drbd{record['drbd_minor']}", "mac": record["mac"], "bridge": record["bridge"],
        "vnc_port": 5900 + record["vnc_display"], "vnc_listen": "127.0.0.1", "cdrom": record["cdrom"],
        "domain_type": record["domain_type"], "on_reboot": "destroy",
    }


@pytest.mark.parametrize("record", [sample_record(), sample_record(cdrom="/srv/x.iso", domain_type="kvm")])
def test_summary_round_trips_the_rendered_xml(record):
    assert render.domain_summary(render.domain_xml(record)) == expected_summary(record)


LIBVIRT_STYLE = """<domain type='kvm' id='4'>
  <name>web-1</name>
  <memory unit='KiB'>262144</memory>
  <currentMemory unit='KiB'>262144</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <on_reboot>restart</on_reboot>
  <devices>
    <disk type='file' device='cdrom'><source file='/srv/x.iso'/><target dev='hdc' bus='ide'/></disk>
    <disk type='block' device='disk'><source dev='/dev/drbd3' index='1'/><target dev='vda'/></disk>
    <interface type='bridge'><mac address='52:54:00:0A:0B:0C'/><source bridge='br1'/></interface>
    <graphics type='vnc' port='5907' autoport='no'><listen type='address' address='0.0.0.0'/></graphics>
  </devices>
</domain>"""


def test_summary_reads_libvirt_style_xml_and_shows_drift():
    summary = render.domain_summary(LIBVIRT_STYLE)
    assert summary == dict(expected_summary(sample_record(cdrom="/srv/x.iso")), domain_type="kvm",
                           bridge="br1", vnc_listen="0.0.0.0", on_reboot="restart")
    drift = {k for k, v in summary.items()
             if v != render.domain_summary(render.domain_xml(sample_record(cdrom="/srv/x.iso")))[k]}
    assert drift == {"domain_type", "bridge", "vnc_listen", "on_reboot"}


def test_summary_of_a_minimal_domain_has_nones_and_bad_xml_raises():
    summary = render.domain_summary("<domain type='qemu'><name>x</name><memory>1048576</memory></domain>")
    assert summary["memory_mib"] == 1024 and summary["name"] == "x"
    assert {k for k, v in summary.items() if v is None} == {
        "vcpus", "disk", "mac", "bridge", "vnc_port", "vnc_listen", "cdrom", "on_reboot"}
    with pytest.raises(ValueError, match="not well-formed"):
        render.domain_summary("<domain><name>x</domain>")
    with pytest.raises(ValueError, match="not 'domain'"):
        render.domain_summary("<network/>")
    with pytest.raises(ValueError, match="unit"):
        render.domain_summary("<domain><memory unit='furlong'>1</memory></domain>")


# --- machines_digest ---------------------------------------------------------------

def test_machines_digest_is_the_sha256_of_the_bytes():
    assert render.machines_digest(b"") == hashlib.sha256(b"").hexdigest()
    text = "name: 'web-1'\nhome: 'hostA'\n"
    assert render.machines_digest(text) == render.machines_digest(text.encode()) == \
        hashlib.sha256(text.encode()).hexdigest()
    assert render.machines_digest(text) != render.machines_digest(text + "\n")
