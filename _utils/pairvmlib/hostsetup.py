"""Host setup checks: SSH public keys and block devices for LVM.

Pure (no I/O):

- ``public_key`` and ``authorized_key_line``: SSH public keys checked before
  they reach ``authorized_keys`` / ``known_hosts``.
- ``pv_verdict``: whether a block device may become an LVM physical volume,
  from what was found on it (``blkid``, ``wipefs``, ``pvs``, sysfs).

A bad value raises ``Invalid`` naming the field, the value and the rule.
"""

import base64
import binascii
import re

from pairvmlib import checks

KEY_TYPES = (
    "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
)
KEY_COMMENT_RE = re.compile(r"[A-Za-z0-9@._:+-]{1,100}")
# Restrictions an authorized_keys line may carry besides from="..." (no
# command=, environment=, permitopen=: those take values).
KEY_OPTIONS = ("no-agent-forwarding", "no-port-forwarding", "no-pty", "no-user-rc", "no-X11-forwarding",
               "restrict")


def public_key(text, field="key"):
    """Parse and check one OpenSSH public key line ``TYPE BASE64 [COMMENT]``.

    Returns ``{"type", "key", "comment"}`` (comment None when absent or not a
    plain ``user@host`` word). The base64 blob must decode and name the same
    type, so no option, second key or newline can ride along.
    """
    if not isinstance(text, str) or "\n" in text.strip() or "\r" in text:
        checks.fail(field, text, "must be one OpenSSH public key line")
    parts = text.split()
    if len(parts) not in (2, 3) or parts[0] not in KEY_TYPES:
        checks.fail(field, text, f"must be 'TYPE BASE64 [COMMENT]' with TYPE one of {', '.join(KEY_TYPES)}")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        blob = b""
    size = int.from_bytes(blob[:4], "big") if len(blob) >= 4 else 0
    if blob[4:4 + size] != parts[0].encode() or len(blob) <= 4 + size:
        checks.fail(field, parts[1][:20] + "...", f"is not the base64 of a {parts[0]} key")
    comment = parts[2] if len(parts) == 3 and KEY_COMMENT_RE.fullmatch(parts[2]) else None
    return {"type": parts[0], "key": parts[1], "comment": comment}


def authorized_key_line(key, from_ip, options=("no-agent-forwarding", "no-port-forwarding",
                                                "no-X11-forwarding")):
    """One ``authorized_keys`` line: the key usable only from ``from_ip``.

    ``from="<ip>"`` plus the given restrictions (from ``KEY_OPTIONS``).

    Example:

    .. code-block:: python

        hostsetup.authorized_key_line("ssh-ed25519 AAAA... root@hostB", "192.0.2.12")
    """
    parsed = public_key(key)
    ip = checks.ipv4("from", from_ip)
    if isinstance(options, str) or not isinstance(options, list | tuple):
        checks.fail("key_options", options, "must be a list")
    for option in options:
        if option not in KEY_OPTIONS:
            checks.fail("key_options", option, f"is not one of {', '.join(KEY_OPTIONS)}")
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
