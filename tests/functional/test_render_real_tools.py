"""The rendered DRBD files and domain XML, checked by the real tools (no daemons).

DRBD: drbd-utils 9.22 with no kernel module. What makes it work here:

- ``drbdadm -c FILE ...`` reads a private drbd.conf (it includes the rendered
  global_common.conf and *.res by absolute path), never /etc/drbd.conf.
- ``DRBD_DRIVER_VERSION_OVERRIDE=8.4.11`` makes drbdadm act as for an 8.4
  kernel: it hands off to /lib/drbd/drbdadm-84 (the 8.4 parser; a DRBD 9
  ``node-id`` is a parse error and ``dump`` adds no node-id) and the dry run
  prints ``drbdsetup-84`` commands. Without it, drbdadm 9 parses the file as
  DRBD 9 (and accepts 8.4 syntax too, so it would prove nothing).
- ``__DRBD_NODE__=hostA`` makes drbdadm pretend ``uname -n`` is hostA (it
  prints "PRETENDING that I am >>hostA<<" on stderr). Without it the ``on``
  sections match no host here and ``dump NAME`` fails with rc 1 ("not defined
  in your config (for this host)").
- ``-d`` (dry run) makes ``up`` print the drbdsetup-84/drbdmeta commands
  instead of running them; it writes nothing (checked with strace).
- Harmless stderr noise: "modinfo: ERROR: Module drbd not found." and
  "IP 10.78.0.11 not found on this host." (rc stays 0).
- A broken file is rc 10 with ``file:line`` on stderr.

So: ``env DRBD_DRIVER_VERSION_OVERRIDE=8.4.11 __DRBD_NODE__=hostA
drbdadm -c DIR/drbd.conf dump NAME`` and ``... drbdadm -c DIR/drbd.conf -d up NAME``.

XML: ``virt-xml-validate FILE domain`` (needs xmllint from libxml2-utils), and
libvirt's built-in test driver ``test:///default``, which lives inside one
process: one ``virsh`` call runs several commands separated by ``;``, and the
Python binding opens its own private instance with ``libvirt.open``.
"""

import os
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

from pairvmlib import render
from tests.unit.utils.test_render import TIMING, XMLNS, expected_summary, sample_record

DRBD_ENV = {"DRBD_DRIVER_VERSION_OVERRIDE": "8.4.11"}
ADDRESS = {"hostA": "10.78.0.11", "hostB": "10.78.0.12"}
KERNEL_BOOT = {"kernel": "/srv/vmlinuz", "initrd": "/srv/initrd.img",
               "cmdline": "console=ttyS0 </cmdline><devices> & 'quoted'", "cpu_model": "qemu64"}

needs_drbdadm = pytest.mark.skipif(
    not (shutil.which("drbdadm") and os.path.exists("/lib/drbd/drbdadm-84")),
    reason="needs drbd-utils (drbdadm and /lib/drbd/drbdadm-84)")
needs_xmllint = pytest.mark.skipif(
    not (shutil.which("virt-xml-validate") and shutil.which("xmllint")),
    reason="needs virt-xml-validate (libvirt-clients) and xmllint (libxml2-utils)")
needs_virsh = pytest.mark.skipif(not shutil.which("virsh"), reason="needs virsh (libvirt-clients)")


# --- DRBD ---------------------------------------------------------------------------

def write_drbd(directory, records, options=TIMING, extra=None):
    """Write global_common.conf, one .res per record (+ ``extra`` name->text) and drbd.conf."""
    (directory / "global_common.conf").write_text(render.drbd_global_common(options))
    files = {r["name"]: render.drbd_resource(r, options) for r in records}
    files.update(extra or {})
    for name, text in files.items():
        (directory / f"{name}.res").write_text(text)
    conf = directory / "drbd.conf"
    conf.write_text(f'include "{directory}/global_common.conf";\ninclude "{directory}/*.res";\n')
    return conf


def drbdadm(conf, *args, node="hostA"):
    """Run the real drbdadm with the 8.4 tools selected and ``node`` as this host."""
    env = dict(os.environ, **DRBD_ENV, __DRBD_NODE__=node)
    return subprocess.run(["drbdadm", "-c", str(conf), *args], env=env, capture_output=True, text=True,
                          timeout=30, check=False)


@needs_drbdadm
@pytest.mark.parametrize("node", ["hostA", "hostB"])
def test_drbdadm_84_parses_the_rendered_resource_on_both_hosts(tmp_path, node):
    conf = write_drbd(tmp_path, [sample_record()])
    proc = drbdadm(conf, "dump", "web-1", node=node)
    assert proc.returncode == 0, proc.stderr
    assert f">>{node}<<" in proc.stderr
    dump = proc.stdout
    assert f"# resource web-1 on {node}: not ignored, not stacked" in dump
    assert "node-id" not in dump  # the 8.4 parser, not drbdadm 9's
    for host, vg in (("hostA", "here"), ("hostB", "there")):
        assert f"address          ipv4 {ADDRESS[host]}:7803;" in dump
        assert f"disk             /dev/{vg}/web-1;" in dump
    assert "device           /dev/drbd3 minor 3;" in dump
    assert "after-sb-0pri    discard-zero-changes;" in dump


@needs_drbdadm
@pytest.mark.parametrize("node, peer", [("hostA", "hostB"), ("hostB", "hostA")])
def test_drbdadm_84_dry_run_up_prints_the_commands_it_would_run(tmp_path, node, peer):
    conf = write_drbd(tmp_path, [sample_record()])
    proc = drbdadm(conf, "-d", "up", "web-1", node=node)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    vg = "here" if node == "hostA" else "there"
    assert lines[:2] == ["drbdsetup-84 new-resource web-1", "drbdsetup-84 new-minor web-1 3 0"]
    assert f"drbdmeta 3 v08 /dev/{vg}/web-1 internal apply-al" in lines
    attach = next(line for line in lines if line.startswith("drbdsetup-84 attach 3 "))
    assert {"--on-io-error=detach", "--c-plan-ahead=0", "--resync-rate=100M"} <= set(attach.split())
    connect = next(line for line in lines if line.startswith("drbdsetup-84 connect "))
    local, remote = f"ipv4:{ADDRESS[node]}:7803", f"ipv4:{ADDRESS[peer]}:7803"
    assert connect.split()[:4] == ["drbdsetup-84", "connect", "web-1", local] and connect.split()[4] == remote
    assert {"--protocol=C", "--connect-int=2", "--after-sb-0pri=discard-zero-changes",
            "--after-sb-1pri=disconnect", "--after-sb-2pri=disconnect"} <= set(connect.split())
    assert "allow-two-primaries" not in connect


@needs_drbdadm
def test_drbdadm_84_takes_the_secret_and_two_primaries(tmp_path):
    options = dict(TIMING, shared_secret="Zm9v+bar/baz=", allow_two_primaries=True)
    conf = write_drbd(tmp_path, [sample_record()], options)
    proc = drbdadm(conf, "-d", "up", "web-1")
    assert proc.returncode == 0, proc.stderr
    connect = next(line for line in proc.stdout.splitlines() if line.startswith("drbdsetup-84 connect "))
    assert {"--allow-two-primaries=yes", "--cram-hmac-alg=sha1", "--shared-secret=Zm9v+bar/baz="} \
        <= set(connect.split())


@needs_drbdadm
@pytest.mark.parametrize("name", ["proxy", "disk", "on", "resource", "net", "options", "volume"])
def test_drbdadm_84_takes_vm_names_that_are_drbd_keywords(tmp_path, name):
    # Unquoted, `resource proxy {` is a parse error: the renderer quotes names.
    # (`common`, `global` clash with those sections and `all` means every
    # resource: the renderer refuses them, see the unit tests.)
    conf = write_drbd(tmp_path, [sample_record(name=name)])
    proc = drbdadm(conf, "-d", "up", name)
    assert proc.returncode == 0, proc.stderr
    assert f"drbdsetup-84 new-resource {name}" in proc.stdout


@needs_drbdadm
def test_drbdadm_84_accepts_two_vms_and_rejects_a_port_used_twice(tmp_path):
    # Resources are named: `dump all` (or no name) also checks that each
    # address is on this host and fails (rc 10) where 10.78.0.11 is not.
    good = tmp_path / "good"
    good.mkdir()
    other = sample_record(name="db", drbd_port=7804, drbd_minor=4)
    proc = drbdadm(write_drbd(good, [sample_record(), other]), "dump", "web-1", "db")
    assert proc.returncode == 0, proc.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    clash = sample_record(name="db", drbd_minor=4)
    proc = drbdadm(write_drbd(bad, [sample_record(), clash]), "dump", "web-1", "db")
    assert proc.returncode == 10
    assert "conflicting use of IP '10.78.0.11:7803'" in proc.stderr


@needs_drbdadm
def test_drbdadm_84_rejects_a_missing_semicolon_with_file_and_line(tmp_path):
    broken = render.drbd_resource(sample_record()).replace("meta-disk internal;", "meta-disk internal", 1)
    conf = write_drbd(tmp_path, [], extra={"web-1": broken})
    proc = drbdadm(conf, "dump", "web-1")
    assert proc.returncode == 10
    assert f"{tmp_path}/web-1.res:" in proc.stderr and "';' expected" in proc.stderr


@needs_drbdadm
def test_drbdadm_84_rejects_drbd9_syntax(tmp_path):
    drbd9 = render.drbd_resource(sample_record()).replace(
        "device /dev/drbd3;", "node-id 0;\n        device /dev/drbd3;", 1)
    proc = drbdadm(write_drbd(tmp_path, [], extra={"web-1": drbd9}), "dump", "web-1")
    assert proc.returncode == 10 and "got 'node-id'" in proc.stderr


# --- libvirt ---------------------------------------------------------------------------

VARIANTS = {
    "disc-boot": sample_record(),
    "kernel-boot": sample_record(name="kern", hypervisor_options=KERNEL_BOOT, cdrom="/srv/iso/a b&c.iso",
                                 domain_type="kvm", mac="52:54:00:0a:0b:0d", vnc_display=8),
}


@needs_xmllint
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_virt_xml_validate_accepts_the_domain(tmp_path, variant):
    path = tmp_path / "domain.xml"
    uuid = "6f0c9e4e-0000-4000-8000-000000000001"  # a domain redefined under its UUID
    path.write_text(render.domain_xml(VARIANTS[variant], options={"digest": "0" * 64, "uuid": uuid}))
    proc = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr.strip().endswith("validates")


@needs_xmllint
@pytest.mark.parametrize("iso", [None, "/srv/iso/a b&c.iso"])
def test_virt_xml_validate_accepts_the_cdrom_pairvm_changes_live(tmp_path, iso):
    """The device of cdrom_xml (what pairvm.cdrom hands updateDeviceFlags), inside a domain."""
    text = render.domain_xml(sample_record())
    start, end = text.index("<disk type=\"file\" device=\"cdrom\">"), text.index("</disk>", text.index(
        "device=\"cdrom\"")) + len("</disk>")
    path = tmp_path / "domain.xml"
    path.write_text(text[:start] + render.cdrom_xml(iso) + text[end:])
    proc = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_xmllint
def test_virt_xml_validate_rejects_a_broken_domain(tmp_path):
    path = tmp_path / "domain.xml"
    path.write_text(render.domain_xml(sample_record()).replace("<vcpu>2</vcpu>", "<vcpu>two</vcpu>"))
    proc = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode != 0


@needs_virsh
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_virsh_test_driver_defines_the_domain_and_dumps_it_back(tmp_path, variant):
    record = VARIANTS[variant]
    path = tmp_path / "domain.xml"
    path.write_text(render.domain_xml(record))
    # One process: the test driver's state does not outlive a virsh call.
    script = f"define --validate {path}; dumpxml {record['name']}"
    proc = subprocess.run(["virsh", "-q", "-c", "test:///default", script], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert render.domain_summary(proc.stdout) == expected_summary(record)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_libvirt_binding_round_trip_keeps_every_compared_field(variant):
    libvirt = pytest.importorskip("libvirt")
    record = VARIANTS[variant]
    rendered = render.domain_xml(record, options={"digest": "f" * 64})
    conn = libvirt.open("test:///default")
    try:
        dom = conn.defineXMLFlags(rendered, libvirt.VIR_DOMAIN_DEFINE_VALIDATE)
        dumped = dom.XMLDesc(0)
        metadata = ET.fromstring(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, XMLNS))
    finally:
        conn.close()
    assert render.domain_summary(dumped) == render.domain_summary(rendered) == expected_summary(record)
    # libvirt hands the element back without its namespace prefix.
    assert (metadata.findtext("home"), metadata.findtext("digest")) == ("hostA", "f" * 64)
    root = ET.fromstring(dumped)
    assert root.findtext("os/cmdline") == record["hypervisor_options"].get("cmdline")
    assert [root.findtext(e) for e in ("on_poweroff", "on_reboot", "on_crash")] == ["destroy"] * 3
