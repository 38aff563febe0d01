"""pairvmlib.hostsetup: SSH key lines and the PV verdict. Pure functions, no loader mocking."""

import base64

import pytest

from pairvmlib import hostsetup

host = hostsetup


# --- SSH ----------------------------------------------------------------------------

def key_blob(kind="ssh-ed25519", body=b"\x00" * 36):
    raw = len(kind).to_bytes(4, "big") + kind.encode() + body
    return base64.b64encode(raw).decode()


ED25519 = f"ssh-ed25519 {key_blob()} root@hostB"


def test_public_key_is_split_and_checked():
    assert host.public_key(ED25519) == {"type": "ssh-ed25519", "key": key_blob(), "comment": "root@hostB"}
    assert host.public_key(f"ssh-ed25519 {key_blob()}")["comment"] is None
    assert host.public_key(f"ssh-ed25519 {key_blob()} weird\"comment")["comment"] is None


@pytest.mark.parametrize("text", [
    f"ssh-rsa {key_blob()}",                               # blob names another type
    f"ssh-ed25519 {key_blob()[:-4]}!!!!",                  # not base64
    f"ssh-ed25519 {key_blob('ssh-ed25519', b'')}",        # type only, no key material
    f'command="sh" ssh-ed25519 {key_blob()}',              # options in front
    f"ssh-ed25519 {key_blob()} c1 c2",                     # two comments
    f"ssh-ed25519 {key_blob()}\nssh-ed25519 {key_blob()}",  # two keys
    f"ssh-dss {key_blob('ssh-dss')}",                       # type not allowed
    "", None, 42,
])
def test_bad_public_keys_are_refused(text):
    with pytest.raises(ValueError):
        host.public_key(text)


def test_authorized_key_line_restricts_to_the_peer_admin_address():
    assert host.authorized_key_line(ED25519, "192.0.2.12") == (
        f'from="192.0.2.12",no-agent-forwarding,no-port-forwarding,no-X11-forwarding '
        f"ssh-ed25519 {key_blob()} root@hostB")
    assert host.authorized_key_line(ED25519, "192.0.2.12", ["restrict", "restrict"]).startswith(
        'from="192.0.2.12",restrict ssh-ed25519 ')


@pytest.mark.parametrize("from_ip, options, match", [
    ("192.0.2.12/32", [], "from"), ('192.0.2.12",command="sh', [], "from"),
    ("192.0.2.12", ['command="sh"'], "key_options"), ("192.0.2.12", "restrict", "key_options"),
])
def test_authorized_key_line_refuses_bad_address_or_options(from_ip, options, match):
    with pytest.raises(ValueError, match=match):
        host.authorized_key_line(ED25519, from_ip, options)


# --- PV verdict ---------------------------------------------------------------------

BLANK = {"exists": True, "block": True, "blkid": {}, "signatures": [], "pv": None, "partitions": [],
         "holders": [], "mounted": []}


def verdict(vg="here", **probe):
    return host.pv_verdict("/dev/sdb", vg, dict(BLANK, **probe))


def test_blank_member_and_orphan_devices_are_usable():
    assert verdict() == {"usable": True, "state": "blank", "reason": "/dev/sdb is blank"}
    lvm = {"blkid": {"TYPE": "LVM2_member", "USAGE": "raid"},
           "signatures": [{"type": "LVM2_member", "offset": "0x218"}]}
    member = verdict(pv={"vg": "here"}, holders=["dm-0"], **lvm)
    assert member["usable"] and member["state"] == "member"
    orphan = verdict(pv={"vg": ""}, **lvm)
    assert orphan["usable"] and orphan["state"] == "orphan"


@pytest.mark.parametrize("probe, what", [
    ({"exists": False}, "does not exist"),
    ({"block": False}, "is not a block device"),
    ({"blkid": {"TYPE": "ext4", "USAGE": "filesystem"}, "signatures": [{"type": "ext4", "offset": "0x438"}]},
     "holds data: ext4 filesystem (signature at offset 0x438)"),
    ({"blkid": {"TYPE": "xfs", "USAGE": "filesystem"}}, "holds data: xfs filesystem"),
    ({"blkid": {"PTTYPE": "dos"}}, "holds data: dos partition table"),
    ({"blkid": {"PTTYPE": "gpt"}, "signatures": [{"type": "gpt", "offset": "0x200"},
                                                 {"type": "PMBR", "offset": "0x1fe"}]},
     "gpt partition table (signature at offset 0x200); PMBR data (signature at offset 0x1fe)"),
    ({"blkid": {"AMBIVALENT": "1"}}, "ambivalent"),
    ({"partitions": ["sdb1"]}, "partitions sdb1"),
    ({"holders": ["md0"]}, "holders md0"),
    ({"mounted": ["/srv"]}, "mounted filesystem or swap (/srv)"),
    ({"pv": {"vg": "there"}, "blkid": {"TYPE": "LVM2_member"}}, "a physical volume of volume group there"),
    ({"blkid": {"TYPE": "LVM2_member"}}, "LVM physical volume signature that LVM does not list"),
    ({"pv": {"vg": ""}, "signatures": [{"type": "LVM2_member", "offset": "0x218"},
                                       {"type": "ext4", "offset": "0x438"}]},
     "ext4 data (signature at offset 0x438)"),
])
def test_devices_with_data_or_in_use_are_refused_saying_what_is_there(probe, what):
    result = verdict(**probe)
    assert result["usable"] is False and result["state"] == "refused"
    assert result["reason"].startswith("/dev/sdb ") and what in result["reason"]
