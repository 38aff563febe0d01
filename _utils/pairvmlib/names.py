"""The naming rules: VM names and interface names, one definition each.

Standard library only: the host command imports it too.
"""

import re

# A VM name becomes the LV, the DRBD resource, the libvirt domain and the tap
# interface ``vm-<name>``, which must fit Linux's 15 characters.
VM_NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,11}")
VM_NAME_RULE = (
    "1 to 12 characters: a lower-case letter, then lower-case letters, digits or hyphens "
    "(the name becomes the LV, the DRBD resource, the libvirt domain and the tap vm-<name>, "
    "at most 15 characters)"
)
# drbdadm gives these words a meaning of their own: a resource may not be called so.
DRBD_RESERVED = ("all", "common", "global")
TAP_PREFIX = "vm-"

# A Linux interface name: 1 to 15 bytes. A first character that is a letter or
# digit keeps '-' (option injection), '.' and '..' out; no '/', ':' or space.
IFNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
IFNAME_RULE = ("an interface name of 1 to 15 letters, digits, '_', '.' or '-', starting with a "
               "letter or digit")


# A pair's name becomes a directory of the master's registry (pairs/<name>).
PAIR_NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,31}")
PAIR_NAME_RULE = "1 to 32 characters: a lower-case letter, then lower-case letters, digits or hyphens"


def vm_name_problem(name):
    """Why ``name`` is not a valid VM name (a sentence), or None when it is."""
    if name in DRBD_RESERVED:
        return f"{name!r} is reserved by drbdadm ({', '.join(DRBD_RESERVED)})"
    if isinstance(name, str) and VM_NAME_RE.fullmatch(name):
        return None
    why = ""
    if isinstance(name, str):
        bad = sorted({c for c in name if not re.fullmatch(r"[a-z0-9-]", c)})
        if len(name) > 12:
            why = f" (it has {len(name)})"
        elif bad:
            why = f" (it contains {''.join(bad)!r})"
        elif name:
            why = " (it must start with a letter)"
    return f"must be {VM_NAME_RULE}, got {name!r}{why}"


def is_vm_name(name):
    return vm_name_problem(name) is None


def is_pair_name(name):
    return isinstance(name, str) and bool(PAIR_NAME_RE.fullmatch(name))


def is_ifname(name):
    """An interface name (``IFNAME_RULE``); ``.`` and ``..`` are not."""
    return isinstance(name, str) and bool(IFNAME_RE.fullmatch(name)) and name not in (".", "..")
