"""pairvm_host: states of the pairvm host setup (``salt/pairvm/host/``).

Small states for what Salt's core states do not cover safely: a guard that
refuses to turn a device holding data into an LVM physical volume, root's SSH
key pair, publishing this host's SSH identity in the Salt mine only when it
changed, the peer's key in ``authorized_keys`` (a block of its own, the file
created when missing), DRBD's ``global_common.conf`` from the same function
the VM code uses, no libvirt autostart for pairvm VMs, and ``ifup`` of the
interfaces ifupdown has not configured yet. Each supports ``test=True`` and returns
precise ``changes``; none changes anything on a second run.
"""

import difflib
import glob
import logging
import os
import stat

import salt.utils.files
from pairvmlib import defaults, render
from pairvmlib.errors import Invalid
from salt.exceptions import CommandExecutionError, SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "pairvm_host"

DRBD_GLOBAL_COMMON = "/etc/drbd.d/global_common.conf"
AUTOSTART_DIR = "/etc/libvirt/qemu/autostart"
MARKER_START = "# pairvm: the peer host's root key, usable from its admin address only (managed by Salt)"
MARKER_END = "# pairvm: end of the peer host's root key"


def __virtual__():
    if "pairvm_host.device_usage" not in __salt__:
        return (False, "pairvm_host: the pairvm_host execution module is not available (sync _modules)")
    return __virtualname__


def _ret(name, result=True, comment="", changes=None):
    return {"name": name, "result": result, "comment": comment, "changes": changes or {}}


def _run(argv, timeout=None):
    kwargs = {"timeout": timeout} if timeout else {}
    return __salt__["cmd.run_all"](argv, python_shell=False, ignore_retcode=True, **kwargs)


# --- storage ----------------------------------------------------------------------


def pvs_usable(name, devices):
    """
    Make sure every device listed for volume group ``name`` may hold it, or fail.

    Changes nothing. Passes for a device that is already a physical volume of
    ``name``, an unused physical volume, or blank; fails, naming the device and
    what is on it, for one that holds a filesystem or other signature, a
    partition table, partitions, a PV of another volume group, or is in use.
    Put it before ``lvm.pv_present`` / ``lvm.vg_present`` (``require``): those
    must never see a device with data on it.

    .. code-block:: yaml

        pairvm-host-storage-here-devices:
          pairvm_host.pvs_usable:
            - name: here
            - devices: [/dev/sdb]
    """
    if isinstance(devices, str) or not isinstance(devices, list) or not devices:
        return _ret(name, False, f"devices of volume group {name} must be a non-empty list, got {devices!r}")
    usable, refused = [], []
    for device in devices:
        try:
            verdict = __salt__["pairvm_host.device_usage"](device, vg=name)["verdict"]
        except (CommandExecutionError, SaltInvocationError) as exc:
            refused.append(f"{device} cannot be probed: {exc}")
            continue
        (usable if verdict["usable"] else refused).append(verdict["reason"])
    if refused:
        return _ret(name, False,
                    f"Refusing to use {', '.join(map(str, devices))} for volume group {name}; nothing was "
                    f"changed. {'. '.join(refused)}. If that data is not needed, wipe the device yourself "
                    "(wipefs -a DEVICE), or list another device.")
    return _ret(name, True, "; ".join(usable))


# --- SSH --------------------------------------------------------------------------


def ssh_keypair(name, comment=None):
    """
    An ed25519 key pair at ``name`` (private, mode 0600) and ``name.pub``.

    Generated with ``ssh-keygen`` when missing; a missing ``.pub`` is derived
    from the private key. An existing key is never replaced.

    .. code-block:: yaml

        pairvm-host-ssh-keypair:
          pairvm_host.ssh_keypair:
            - name: /root/.ssh/id_ed25519
            - comment: root@hostA
    """
    pub = f"{name}.pub"
    if os.path.isfile(name) and os.path.isfile(pub):
        return _ret(name, True, f"key pair {name} exists")
    if os.path.lexists(name) and not os.path.isfile(name):
        return _ret(name, False, f"{name} exists and is not a regular file")
    if os.path.isfile(name):
        changes = {"public key": pub}
        if __opts__["test"]:
            return _ret(name, None, f"would derive {pub} from {name}", changes)
        res = _run(["ssh-keygen", "-y", "-f", name])
        if res["retcode"] != 0:
            return _ret(name, False, f"ssh-keygen -y -f {name} failed: {res['stderr'].strip()}")
        with salt.utils.files.fopen(pub, "w") as fh:
            fh.write(res["stdout"].strip() + (f" {comment}" if comment else "") + "\n")
        os.chmod(pub, 0o644)
        return _ret(name, True, f"derived {pub} from {name}", changes)
    changes = {"created": [name, pub]}
    if __opts__["test"]:
        return _ret(name, None, f"would generate an ed25519 key pair {name}", changes)
    argv = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", name]
    if comment:
        argv += ["-C", comment]
    res = _run(argv)
    if res["retcode"] != 0:
        return _ret(name, False, f"ssh-keygen failed for {name}: {(res['stderr'] or res['stdout']).strip()}")
    return _ret(name, True, f"generated an ed25519 key pair {name}", changes)


def peer_key_authorized(name, line):
    """
    ``authorized_keys`` file ``name`` holds ``line`` in pairvm's block (mode 0600).

    The block between ``MARKER_START`` and ``MARKER_END`` is replaced in place
    (a rotated peer key replaces the old one) or appended; every other line of
    the file is kept. The file is created when missing (``test=True`` reports
    that, where ``file.blockreplace`` would fail on a missing file).

    .. code-block:: yaml

        pairvm-host-ssh-authorize-peer:
          pairvm_host.peer_key_authorized:
            - name: /root/.ssh/authorized_keys
            - line: 'from="192.0.2.12",no-pty ssh-ed25519 AAAA... root@hostB'
    """
    if not isinstance(line, str) or not line.strip() or "\n" in line or "\r" in line:
        return _ret(name, False, "line must be one authorized_keys line")
    old = None
    if os.path.lexists(name):
        if not os.path.isfile(name) or os.path.islink(name):
            return _ret(name, False, f"{name} is not a regular file")
        with salt.utils.files.fopen(name) as fh:
            old = fh.read()
    lines = (old or "").splitlines()
    block = [MARKER_START, line, MARKER_END]
    if MARKER_START in lines and MARKER_END in lines[lines.index(MARKER_START):]:
        start = lines.index(MARKER_START)
        end = lines.index(MARKER_END, start)
        lines[start:end + 1] = block
    else:
        lines += block
    new = "\n".join(lines) + "\n"
    mode = stat.S_IMODE(os.stat(name).st_mode) if old is not None else None
    changes = {}
    if new != old:
        changes["diff"] = "".join(difflib.unified_diff(
            (old or "").splitlines(True), new.splitlines(True), fromfile=name, tofile=name))
    if mode != 0o600:
        changes["mode"] = "0600"
    if not changes:
        return _ret(name, True, f"{name} authorizes the peer's key")
    if __opts__["test"]:
        return _ret(name, None, f"would write the peer's key into {name}", changes)
    tmp = f"{name}.pairvm-tmp"
    with salt.utils.files.fopen(tmp, "w") as fh:
        fh.write(new)
    os.chmod(tmp, 0o600)
    os.rename(tmp, name)
    return _ret(name, True, f"wrote the peer's key into {name}", changes)


def mine_published(name, function, function_args=None, allow_tgt=None, allow_tgt_type="list"):
    """
    This minion's mine entry ``name`` holds what ``function`` returns now.

    Compares with ``mine.get`` and calls ``mine.send`` only when they differ
    (first run, key changed, mine flushed), so a second apply reports no
    change. ``allow_tgt`` / ``allow_tgt_type`` restrict who may read the entry.

    .. code-block:: yaml

        pairvm-host-ssh-publish:
          pairvm_host.mine_published:
            - name: pairvm_ssh
            - function: pairvm_host.ssh_identity
            - allow_tgt: [hostA, hostB]
    """
    function_args = function_args or {}
    if function not in __salt__:
        return _ret(name, False, f"function {function} is not available on this minion")
    try:
        current = __salt__[function](**function_args)
    except (CommandExecutionError, SaltInvocationError) as exc:
        return _ret(name, False, f"{function} failed: {exc}")
    me = __opts__["id"]
    published = (__salt__["mine.get"](me, name) or {}).get(me)
    if published == current:
        return _ret(name, True, f"mine entry {name} is up to date")
    changes = {"old": published, "new": current}
    if __opts__["test"]:
        return _ret(name, None, f"would publish {function} as mine entry {name}", changes)
    kwargs = dict(function_args, mine_function=function)
    if allow_tgt:
        kwargs.update(allow_tgt=allow_tgt, allow_tgt_type=allow_tgt_type)
    if not __salt__["mine.send"](name, **kwargs):
        return _ret(name, False, f"mine.send {name} failed (see the minion log)")
    return _ret(name, True, f"published {function} as mine entry {name}", changes)


# --- DRBD -------------------------------------------------------------------------


def drbd_global_common(name=DRBD_GLOBAL_COMMON, check_cmd="drbdadm dump all -c"):
    """
    DRBD's ``global_common.conf`` as ``pairvmlib.render.drbd_global_common``
    renders it from pillar ``pairvm:drbd_options``.

    The VM code (``pairvm.create``) writes the same file from the same
    function, so the two never fight. Written with ``file.managed``: a diff
    under ``test=True``, and ``check_cmd`` (``drbdadm dump all -c TMPFILE``)
    must accept the new text before it replaces the old one. With a shared
    secret in ``pairvm:drbd_options`` the file is mode 0600 and every
    ``*.res`` beside it is made 0600 too (root only); 0644 otherwise.

    .. code-block:: yaml

        pairvm-host-drbd-global-common:
          pairvm_host.drbd_global_common:
            - name: /etc/drbd.d/global_common.conf
    """
    options = __salt__["config.get"]("pairvm:drbd_options", {}) or {}
    try:
        text = render.drbd_global_common(options)
    except Invalid as exc:
        return _ret(name, False, f"pillar pairvm:drbd_options: {exc}")
    secret = bool(options.get("shared_secret"))
    ret = __states__["file.managed"](
        name=name, contents=text, user="root", group="root", mode="0600" if secret else "0644",
        check_cmd=check_cmd or None)
    if secret and ret["result"] is not False:
        tightened = []
        for res in sorted(glob.glob(os.path.join(os.path.dirname(name), "*.res"))):
            if os.path.isfile(res) and stat.S_IMODE(os.stat(res).st_mode) & 0o077:
                if not __opts__["test"]:
                    os.chmod(res, 0o600)
                tightened.append(res)
        if tightened:
            ret["changes"]["mode 0600 (shared secret)"] = tightened
            ret["comment"] += f"; {'would make' if __opts__['test'] else 'made'} {len(tightened)} " \
                              "resource file(s) root-only (0600)"
            if __opts__["test"]:
                ret["result"] = None
    return ret


# --- libvirt ----------------------------------------------------------------------


def autostart_disabled(name=AUTOSTART_DIR, vms=None, uri=defaults.SETTINGS["libvirt_uri"]):
    """
    libvirt autostarts no pairvm VM: pairvm decides where a VM runs.

    pairvm VMs are those of ``vms`` (pillar) and of the records in
    /machines; their links ``<name>/<vm>.xml`` are removed, through
    ``virsh autostart --disable`` when libvirt answers (so its own view
    changes too), else by unlinking. Links of other domains are left alone.

    .. code-block:: yaml

        pairvm-host-libvirt-no-autostart:
          pairvm_host.autostart_disabled:
            - vms: [web1, db1]
    """
    links = __salt__["pairvm_host.autostart_links"](vms, name)
    if not links:
        return _ret(name, True, "libvirt autostarts no pairvm VM")
    changes = {"removed": links}
    if __opts__["test"]:
        return _ret(name, None, f"would disable libvirt autostart of {len(links)} pairvm VM(s)", changes)
    failed = []
    for link in links:
        vm = os.path.basename(link)[: -len(".xml")]
        res = _run(["virsh", "-q", "-c", uri, "autostart", "--disable", vm], timeout=60)
        if res["retcode"] != 0 or os.path.lexists(link):
            log.debug("virsh autostart --disable %s: rc %s %s", vm, res["retcode"], res["stderr"])
            try:
                os.unlink(link)
            except FileNotFoundError:
                pass
            except OSError as exc:
                failed.append(f"{link}: {exc}")
    if failed:
        return _ret(name, False, "could not remove: " + "; ".join(failed), changes)
    return _ret(name, True, f"disabled libvirt autostart of {len(links)} pairvm VM(s)", changes)


# --- network ----------------------------------------------------------------------


def interfaces_up(name, interfaces):
    """
    ``ifup`` the given interfaces that ifupdown has not configured yet.

    ``name`` is the interfaces file they are defined in; the system's
    configuration (``/etc/network/interfaces``) must include it (``source
    /etc/network/interfaces.d/*``), or the state fails saying so. Interfaces
    ifupdown reports as configured (``ifquery --state``) are left alone: a
    changed stanza of an interface that is up takes effect at its next
    ``ifdown``/``ifup`` or reboot, never behind the operator's back. Under
    ``test=True``, interfaces ifupdown does not know yet (the file is written
    by the same run) are reported as to be brought up.

    .. code-block:: yaml

        pairvm-host-network-up:
          pairvm_host.interfaces_up:
            - name: /etc/network/interfaces.d/pairvm
            - interfaces: [eth0, eth1, br0]
    """
    if isinstance(interfaces, str) or not isinstance(interfaces, list):
        return _ret(name, False, f"interfaces must be a list, got {interfaces!r}")
    unknown = [iface for iface in interfaces if _run(["ifquery", iface])["retcode"] != 0]
    if unknown and __opts__["test"]:
        # The file may be written by this very run (its file.managed only reports under test).
        return _ret(name, None, f"would run ifup {' '.join(interfaces)} once {name} is in place "
                                f"({', '.join(unknown)} not in ifupdown's configuration yet)",
                    {"ifup": list(interfaces)})
    if unknown:
        return _ret(name, False,
                    f"{', '.join(unknown)} not in ifupdown's configuration: /etc/network/interfaces must "
                    f"include {name} (a line `source {os.path.dirname(name)}/*` or `source {name}`)")
    down = [iface for iface in interfaces if _run(["ifquery", "--state", iface])["retcode"] != 0]
    if not down:
        return _ret(name, True, f"ifupdown has configured {', '.join(interfaces) or 'nothing to do'}")
    changes = {"ifup": down}
    if __opts__["test"]:
        return _ret(name, None, f"would run ifup {' '.join(down)}", changes)
    res = _run(["ifup", *down], timeout=600)
    still = [iface for iface in down if _run(["ifquery", "--state", iface])["retcode"] != 0]
    if res["retcode"] != 0 or still:
        came_up = [iface for iface in down if iface not in still]
        return _ret(name, False, f"ifup {' '.join(down)} failed (rc {res['retcode']}): "
                                 f"{(res['stderr'] or res['stdout']).strip()}",
                    {"ifup": came_up} if came_up else {})
    return _ret(name, True, f"ran ifup {' '.join(down)}", changes)
