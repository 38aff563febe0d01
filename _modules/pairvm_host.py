"""pairvm_host: what the pairvm host states (``salt/pairvm/host/``) ask of a host.

Read-only functions: the formula's defaults and backup settings for the SLS
files, render the host's ifupdown configuration, probe a block device before
it may become an LVM physical volume, read this host's SSH identity for the
Salt mine, list libvirt autostart links of pairvm VMs. The states in
``_states/pairvm_host.py`` act on their answers. Every command is an argv
list (``python_shell=False``). Unlike ``pairvm``, this module needs no
libvirt binding: a bare host's first highstate renders with it.

:depends: util-linux (blkid, wipefs), lvm2 (pvs), openssh-client, ifupdown
"""

import json
import logging
import os
import re
import stat

import salt.utils.files
import salt.utils.path
import salt.utils.platform
from pairvmlib import backup, boundary, hostsetup, machines, names
from pairvmlib import commands as command_table
from pairvmlib import defaults as formula_defaults
from pairvmlib import network as ifupdown
from salt.exceptions import CommandExecutionError, SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "pairvm_host"

DEFAULT_KEY_FILE = formula_defaults.HOST["ssh"]["key_file"]
DEFAULT_HOST_KEY_FILE = formula_defaults.HOST["ssh"]["host_key"]
AUTOSTART_DIR = "/etc/libvirt/qemu/autostart"
DEVICE_RE = re.compile(r"/dev/[A-Za-z0-9._+:/-]{1,200}")


def __virtual__():
    if not salt.utils.platform.is_linux():
        return (False, "pairvm_host: pairvm hosts run Linux")
    return __virtualname__


def _run(argv, ok=(0,)):
    res = __salt__["cmd.run_all"](argv, python_shell=False, ignore_retcode=True)
    if res["retcode"] not in ok:
        raise CommandExecutionError(
            f"{' '.join(argv)} failed (rc {res['retcode']}): {(res['stderr'] or res['stdout']).strip()}")
    return res


# --- settings for the SLS files ----------------------------------------------------


def defaults():
    """
    The defaults of every key of pillar ``pairvm:`` (``salt/pairvm/map.jinja``
    merges pillar over them; ``pillar.example`` documents each).

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm_host.defaults
    """
    return formula_defaults.pillar()


@boundary.invocation
def backup_settings():
    """
    Pillar ``pairvm:backup`` validated, with its defaults; each schedule job as
    ``{name, destination, speed, compress, cron}`` (what the state
    ``pairvm.host.backup`` turns into scheduler jobs, and ``pairvm.config``
    copies into /machines/_global for the host command).

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm_host.backup_settings
    """
    return backup.with_job_names(backup.settings(__salt__["config.get"]("pairvm:backup", None)))


def commands():
    """
    What the bash completion of the host command needs, from the command's own
    table (``pairvmlib.commands``): ``{"names": [...], "commands": {name: {"vm", "all",
    "commands", "flags", "words", "files"}}, "vm_name_re"}``.

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm_host.commands
    """
    return command_table.completion_spec()


# --- network ----------------------------------------------------------------------


@boundary.invocation
def interfaces(network, admin_ip, replication_ip, bridge="br0"):
    """
    Render this host's ifupdown configuration from pillar ``pairvm:host:network``.

    ``admin_ip`` and ``replication_ip`` are this host's addresses from
    ``pairvm:pair``, ``bridge`` is ``pairvm:bridge``. The SLS
    ``pairvm.host.network`` writes the text to ``pairvm:host:network:file``
    after ``ifup --no-act`` accepted it. Raises SaltInvocationError naming the
    pillar key of a bad value.

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm_host.interfaces '{"admin": {"interface": "eth0", "prefix": 24}}' \\
            192.0.2.11 198.51.100.11
    """
    return ifupdown.interfaces(network, admin_ip, replication_ip, bridge)


@boundary.invocation
def interface_names(network, admin_ip, replication_ip, bridge="br0"):
    """
    The interfaces ``interfaces`` renders, in the order ``ifup`` brings them up.

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm_host.interface_names '{"bridge": {"ports": ["eth2"]}}' \\
            192.0.2.11 198.51.100.11
    """
    return ifupdown.interface_names(network, admin_ip, replication_ip, bridge)


# --- storage ----------------------------------------------------------------------


def _check_device(device):
    if not isinstance(device, str) or not DEVICE_RE.fullmatch(device) or "/../" in device:
        raise SaltInvocationError(f"device: {device!r} is not a device path under /dev")
    return device


def _stat(device):
    """(exists, is a block device, st_rdev) of a path, following symlinks."""
    try:
        st = os.stat(device)
    except FileNotFoundError:
        return False, False, None
    return True, stat.S_ISBLK(st.st_mode), st.st_rdev


def _blkid(device):
    """``blkid -p`` (low-level probe, no cache): {KEY: value}; {} when nothing is found."""
    res = _run(["blkid", "-p", "-o", "export", device], ok=(0, 2, 8))
    if res["retcode"] == 2:
        return {}
    found = dict(line.split("=", 1) for line in res["stdout"].splitlines() if "=" in line)
    if res["retcode"] == 8:
        found["AMBIVALENT"] = "1"
    return found


def _wipefs(device):
    """Every signature wipefs sees (it only lists: no -a, and --no-act besides)."""
    res = _run(["wipefs", "--no-act", "--json", device])
    if not res["stdout"].strip():
        return []
    return [{"type": sig.get("type"), "offset": sig.get("offset")}
            for sig in json.loads(res["stdout"]).get("signatures", [])]


def _pv(device):
    """None when LVM lists no PV on ``device``, else ``{"vg": name or ""}``."""
    if not salt.utils.path.which("pvs"):
        return None
    res = _run(["pvs", "--reportformat", "json", "-o", "pv_name,vg_name"])
    real = os.path.realpath(device)
    for part in json.loads(res["stdout"])["report"]:
        for row in part.get("pv", []):
            if os.path.realpath(row["pv_name"]) == real:
                return {"vg": row.get("vg_name", "")}
    return None


def _sysfs(real):
    """Partitions and holders of a block device, from /sys/class/block."""
    base = f"/sys/class/block/{os.path.basename(real)}"
    if not os.path.isdir(base):
        return [], []
    partitions = sorted(entry for entry in os.listdir(base)
                        if os.path.exists(os.path.join(base, entry, "partition")))
    holders_dir = os.path.join(base, "holders")
    holders = sorted(os.listdir(holders_dir)) if os.path.isdir(holders_dir) else []
    return partitions, holders


def _mounted(rdev, real):
    """Mount points of the device (by major:minor) and swap use (by path)."""
    wanted = f"{os.major(rdev)}:{os.minor(rdev)}"
    found = []
    with salt.utils.files.fopen("/proc/self/mountinfo") as fh:
        for line in fh:
            fields = line.split()
            if len(fields) > 4 and fields[2] == wanted:
                found.append(fields[4])
    if os.path.exists("/proc/swaps"):
        with salt.utils.files.fopen("/proc/swaps") as fh:
            for line in fh.readlines()[1:]:
                if line.split() and os.path.realpath(line.split()[0]) == real:
                    found.append("swap")
    return found


@boundary.invocation
def device_usage(device, vg=None):
    """
    What is on a block device, and whether it may be a physical volume of ``vg``.

    Read-only: ``blkid -p`` (filesystems, partition tables, RAID and LVM
    signatures), ``wipefs --no-act`` (every signature, with its offset),
    ``pvs`` (the device's volume group), sysfs (partitions, holders) and the
    mount table. Returns the probe plus ``verdict``: ``{"usable", "state"
    (member / orphan / blank / refused), "reason"}``; a device holding a
    filesystem, a partition table, any other signature, or a PV of another
    volume group is refused, with what was found in ``reason``.

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm_host.device_usage /dev/sdb vg=here
    """
    _check_device(device)
    exists, block, rdev = _stat(device)
    probe = {"device": device, "exists": exists, "block": block}
    if block:
        real = os.path.realpath(device)
        probe["blkid"] = _blkid(device)
        probe["signatures"] = _wipefs(device)
        probe["pv"] = _pv(device)
        probe["partitions"], probe["holders"] = _sysfs(real)
        probe["mounted"] = _mounted(rdev, real)
    probe["verdict"] = hostsetup.pv_verdict(device, vg, probe)
    return probe


def pv_is_blank(device):
    """
    True when the device holds nothing: no signature, partition table,
    partitions, holders or mount, and it is no LVM physical volume.

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm_host.pv_is_blank /dev/sdb
    """
    return device_usage(device)["verdict"]["state"] == "blank"


# --- SSH --------------------------------------------------------------------------


def _read_key(path, keep_comment):
    if not os.path.isfile(path):
        return None
    with salt.utils.files.fopen(path) as fh:
        line = fh.readline().strip()
    key = hostsetup.public_key(line, path)
    comment = f" {key['comment']}" if keep_comment and key["comment"] else ""
    return f"{key['type']} {key['key']}{comment}"


@boundary.invocation
def ssh_identity(key_file=DEFAULT_KEY_FILE, host_key_file=DEFAULT_HOST_KEY_FILE):
    """
    This host's SSH identity for its peer: root's public key and the host key.

    ``{"user_key": "ssh-ed25519 AAAA... root@hostA" or None, "host_key":
    "ssh-ed25519 AAAA..." or None}`` (None: the file does not exist yet). The
    state ``pairvm.host.ssh`` publishes it in the Salt mine as
    ``pairvm_ssh``; the peer authorizes the user key and trusts the host key.

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm_host.ssh_identity
    """
    return {"user_key": _read_key(f"{key_file}.pub", True), "host_key": _read_key(host_key_file, False)}


@boundary.invocation
def authorized_key_line(key, from_ip, options=None):
    """
    The ``authorized_keys`` line that lets ``key`` in from ``from_ip`` only.

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm_host.authorized_key_line 'ssh-ed25519 AAAA... root@hostB' 192.0.2.12
    """
    args = (key, from_ip) if options is None else (key, from_ip, options)
    return hostsetup.authorized_key_line(*args)


@boundary.invocation
def public_key(key):
    """
    Split and check an OpenSSH public key line: ``{"type", "key", "comment"}``.

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm_host.public_key 'ssh-ed25519 AAAA... root@hostB'
    """
    return hostsetup.public_key(key)


# --- libvirt ----------------------------------------------------------------------


def pairvm_vm_names(vms=None):
    """
    The pairvm VMs this host knows: ``vms`` (pillar) plus the records in /machines.

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm_host.pairvm_vm_names
    """
    found = {name for name in vms or () if names.is_vm_name(name)}
    return sorted(found | set(machines.vm_names()))


def autostart_links(vms=None, directory=AUTOSTART_DIR):
    """
    libvirt autostart links (``<directory>/<vm>.xml``) of pairvm VMs.

    pairvm decides where a VM runs (``pairvm autostart``): libvirt must not
    start one by itself at boot. The state ``pairvm_host.autostart_disabled``
    removes what this lists.

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm_host.autostart_links
    """
    return [path for path in (os.path.join(directory, f"{name}.xml") for name in pairvm_vm_names(vms))
            if os.path.lexists(path)]
