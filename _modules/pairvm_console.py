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
    Show, insert or eject VM ``name``'s CD, on a running VM without a restart.

    The change lasts until the VM stops; set ``cdrom`` in pillar to keep one.
    A seed CD left by ``pairvm.image`` is attached at every start until it is
    ejected here: ejecting it also deletes the seed. ``test=True`` lists the
    change without making it.

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm.cdrom vm1
        salt hostA pairvm.cdrom vm1 iso=/srv/iso/debian.iso
        salt hostA pairvm.cdrom vm1 eject=True
        salt hostA pairvm.cdrom vm1 eject=True test=True
    """
    host = _host()
    host.machine(name)
    if iso is not None and (not os.path.isabs(iso) or ".." in iso.split("/")):
        raise Failed(f"cdrom: {iso!r} is not an absolute path without '..'")
    if iso is not None and not os.path.isfile(iso):
        raise Failed(f"cdrom: {iso} does not exist on {host.me}")
    with host.lock(name), host.libvirt() as conn:
        dom = host.domain(conn, name)
        if dom is None or not dom.isActive():
            raise Failed(f"VM {name} is not running on {host.me}")
        current = render.domain_summary(dom.XMLDesc(0))["cdrom"]
        if iso is None and not eject:
            return {"name": name, "cdrom": current, "changes": [], "comment": ""}
        target = None if eject else iso
        if target == current:
            return {"name": name, "cdrom": current, "changes": [], "comment": "already so"}
        plan = host.plan(name, test)
        plan.step(f"virsh change-media {name} {render.CDROM_TARGET} "
                  + (f"--insert {target}" if target else "--eject"),
                  dom.updateDeviceFlags, render.cdrom_xml(target), hostlib.libvirt.VIR_DOMAIN_AFFECT_LIVE)
        seed = machines.seed(name)
        if eject and seed and current == seed:  # the seed of pairvm.image is not wanted any more
            plan.step(f"rm {seed}", os.unlink, seed)
        result = plan.result(f"VM {name}'s CD is {target or 'empty'}")
        return dict(result, cdrom=current if test else target)


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
