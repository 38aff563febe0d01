"""pairvm (consoles and media): a running VM's CD, serial console, QEMU monitor, VNC forwards.

Part of the ``pairvm`` execution module: this file shares its virtual name
and its gate (docs/architecture.md).

:depends: libvirt-python
"""

import os

from pairvmlib import boundary, layout, machines, render
from pairvmlib import host as hostlib
from pairvmlib.errors import Failed

try:
    import libvirt_qemu
except ImportError:  # boundary.virtual() refuses the module without libvirt
    libvirt_qemu = None

__virtualname__ = boundary.VIRTUAL_NAME
__virtual__ = boundary.virtual  # the one gate of every pairvm file (docs/architecture.md)


def _host():
    return hostlib.Host.of(globals())


@boundary.execution
def cdrom(name, iso=None, eject=False, test=False):
    """
    Show, insert or eject VM ``name``'s CD on this host.

    Shown (``cdrom``): the CD of the running VM, or what a stopped VM's next
    start attaches (the seed of ``pairvm.image`` while there is one, else the
    CD of its record ``/machines/<name>``, in ``recorded``). A running VM's CD
    is changed live (libvirt change-media). The record, which both hosts'
    next start reads, is changed only through the master, so that the two
    hosts never disagree: ``salt-run pairvm.cdrom`` (or ``pairvm cdrom`` on a
    host) records the CD and then calls this function on both hosts. So on a
    stopped VM this function refuses a CD its record does not hold. Any
    change of the CD also deletes the seed of ``pairvm.image``. ``iso`` must
    be the absolute path of a readable file on this host. ``test=True`` lists
    the changes without making them.

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm.cdrom vm1
        salt hostA pairvm.cdrom vm1 iso=/srv/iso/debian.iso
        salt hostA pairvm.cdrom vm1 eject=True
        salt hostA pairvm.cdrom vm1 eject=True test=True
    """
    host = _host()
    record = host.machine(name)
    if iso is not None and eject:
        raise Failed("cdrom: give iso or eject=True, not both")
    if iso is not None:
        host.check_cdrom(iso)
    seed = machines.seed(name)
    with host.lock(name), host.libvirt() as conn:
        dom = host.domain(conn, name)
        running = dom is not None and dom.isActive()
        current = render.domain_summary(dom.XMLDesc(0))["cdrom"] if running else seed or record["cdrom"]
        shown = {"name": name, "cdrom": current, "recorded": record["cdrom"], "running": running}
        if iso is None and not eject:
            return {**shown, "changes": [], "comment": ""}
        target = None if eject else iso
        if not running and target != record["cdrom"]:
            raise Failed(
                f"VM {name} is not running on {host.me}: the CD of its next start is recorded on both "
                f"hosts, through the master: `pairvm cdrom {name} {iso or 'eject'}` on a host, or "
                f"`salt-run pairvm.cdrom {name} {'iso=' + iso if iso else 'eject=True'}`"
            )
        plan = host.plan(name, test)
        if running and target != current:
            plan.step(f"virsh change-media {name} {render.CDROM_TARGET} "
                      + (f"--insert {target}" if target else "--eject"),
                      dom.updateDeviceFlags, render.cdrom_xml(target), hostlib.libvirt.VIR_DOMAIN_AFFECT_LIVE)
        if seed:  # the seed of pairvm.image is not wanted any more
            plan.step(f"rm {seed}", os.unlink, seed)
        lasting = "" if target == record["cdrom"] else (
            f" until it stops (its record says {record['cdrom'] or 'no CD'}: "
            f"record it with salt-run pairvm.cdrom)")
        result = plan.result(f"VM {name}'s CD is {target or 'empty'}{lasting}" if plan.changes
                             else f"VM {name}'s CD is already {target or 'empty'}")
        return {**shown, **result, "cdrom": current if test else target}


@boundary.execution
def serial(name, lines=50):
    """
    The last ``lines`` lines of VM ``name``'s serial console log on this host.

    (The host command ``pairvm serial NAME`` attaches to the console instead.)

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm.serial vm1 lines=20
    """
    host = _host()
    host.machine(name)
    try:
        lines = int(lines)
    except (TypeError, ValueError):
        lines = 0
    if lines < 1:
        raise Failed("serial: lines must be a whole number of 1 or more")
    path = layout.serial_log_path(name)
    text = machines.read_text(path)
    if text is None:
        raise Failed(f"VM {name} has no serial log on {host.me} ({path}): has it run here?")
    return "\n".join(text.splitlines()[-lines:])


@boundary.execution
def monitor(name, command):
    """
    Pass a QEMU monitor (HMP) command to running VM ``name`` through libvirt.

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm.monitor vm1 'info status'
    """
    host = _host()
    host.machine(name)
    with host.libvirt() as conn:
        dom = host.domain(conn, name)
        if dom is None or not dom.isActive():
            raise Failed(f"VM {name} is not running on {host.me}")
        try:
            return libvirt_qemu.qemuMonitorCommand(
                dom, str(command), libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP
            ).strip()
        except hostlib.libvirt.libvirtError as exc:
            raise Failed(f"monitor command failed: {exc}") from exc


@boundary.execution
def print_ssh_forwards():
    """
    SSH port forwards that reach the VNC consoles of the VMs running here.

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm.print_ssh_forwards
    """
    host = _host()
    running = host.running()
    address = host.view().get("here_ip", host.me)
    lines = [
        f"ssh -N -L {5900 + r['vnc_display']}:127.0.0.1:{5900 + r['vnc_display']} root@{address}  # {name}"
        for name, r in host.machines().items()
        if name in running and r.get("vnc_display") is not None
    ]
    return "\n".join(lines) if lines else "no VM is running on this host"
