"""pairvm: KVM virtual machines on a pair of hosts with DRBD-replicated discs.

The VM lifecycle on one host: create and destroy its storage and
configuration, start and stop it, bring every VM up after a boot. The
other ``pairvm.*`` functions live in files of their own that share this
virtual name (``pairvm_console``, ``pairvm_storage``, ``pairvm_backup``,
``pairvm_image``, ``pairvm_health``; docs/architecture.md).

A VM's record comes from pillar (``pairvm:vms`` plus the master's
allocations in ``pairvm:allocations``) when it is created, and from this
host's ``/machines/<vm>`` afterwards, so a host keeps working while the
master is down. The runtime (LVM, DRBD, libvirt) is queried once per call,
however many VMs there are.

Mutating functions return ``{"name", "changes": [...], "comment"}``: one line
per thing done (with ``test=True``: that would be done), often the exact
command; no changes means nothing was to do. They raise
``CommandExecutionError`` with what to do when they refuse or fail.

:depends: libvirt-python, drbd-utils, lvm2
"""

import functools
import logging
import os
import socket
import struct
import time

from pairvmlib import boundary, layout, machines, render, schema
from pairvmlib import host as hostlib
from pairvmlib.errors import Failed
from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

__virtualname__ = boundary.VIRTUAL_NAME
__virtual__ = boundary.virtual  # the one gate of every pairvm file (docs/architecture.md)


def _host():
    return hostlib.Host.of(globals())


# --- the record as pillar defines it -----------------------------------------------------


@boundary.execution
def pillar_record(name):
    """
    The record of VM ``name`` as pillar defines it now, with its allocation
    and the CD recorded by ``salt-run pairvm.cdrom`` (``pairvm:cdroms``).

    Its ``disc_mib`` is the larger of the definition's ``disc`` and the size
    ``salt-run pairvm.resize`` recorded for the VM in the registry (served as
    pillar ``pairvm:resized``), so a grown disc is never described smaller.
    Its ``home`` is the one ``salt-run pairvm.swap`` recorded (pillar
    ``pairvm:homes``) over the definition's.

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm.pillar_record vm1
    """
    hostlib.check_name(name)
    if __pillar__.get("_errors"):
        raise Failed("the master could not render this host's pillar: "
                     + "; ".join(map(str, __pillar__["_errors"])))
    pairvm = __pillar__.get("pairvm", {})
    settings, definitions = _validated_pillar(pairvm)
    if name not in definitions:
        raise Failed(f"VM {name} is not defined in pillar pairvm:vms")
    alloc = pairvm.get("allocations", {}).get(name)
    if not alloc:
        raise Failed(
            f"VM {name} has no allocation yet (IP, MAC, DRBD port): run "
            f"`salt-run pairvm.allocate` (the orchestrate does) and refresh pillar"
        )
    definition = schema.recorded_cdrom(definitions[name], pairvm.get("cdroms", {}).get(name))
    grown = schema.resized(pairvm).get(name, 0)
    if grown > definition["disc_mib"]:
        definition = {**definition, "disc_mib": grown}
    definition = {**definition, "home": schema.homes(pairvm, settings).get(name, definition["home"])}
    return schema.record(name, definition, alloc, settings)


def _validated_pillar(pairvm):
    """(settings, definitions) of pillar ``pairvm``, validated once per job.

    Keyed by the pillar object itself (kept, so its id is never reused): a
    refreshed pillar is a new object. A steady-state apply of N VMs calls
    this N times (bench/vm_scale.py)."""
    cached = __context__.get("pairvm.pillar")
    if cached is None or cached[0] is not pairvm:
        cached = (pairvm, schema.settings(pairvm), schema.vms(pairvm))
        __context__["pairvm.pillar"] = cached
    return cached[1], cached[2]


def _drbd_options():
    """Pillar ``pairvm:drbd_options`` (with the pair's DRBD secret), read once per job."""
    if "pairvm.drbd_options" not in __context__:
        __context__["pairvm.drbd_options"] = __salt__["config.get"]("pairvm:drbd_options", {}) or {}
    return __context__["pairvm.drbd_options"]


@boundary.execution
def drbd_common_config():
    """
    The text of /etc/drbd.d/global_common.conf for this pair (pillar ``pairvm:drbd_options``).

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm.drbd_common_config
    """
    return render.drbd_global_common(_drbd_options())


# --- create / destroy ----------------------------------------------------------------------


@boundary.execution
def create(name, test=False):
    """
    Create VM ``name``'s storage and configuration on this host, from pillar.

    LV ``here/<name>`` on the VM's home host or ``there/<name>`` on the peer,
    DRBD metadata, ``/etc/drbd.d/<name>.res`` (checked by ``drbdadm``; the
    pair's ``global_common.conf`` is kept beside it), the
    resource brought up as Secondary, and ``/machines/<name>``. On the home
    host a brand-new resource is made the sync source of the initial sync.
    Running it again changes nothing. On failure what this call created is
    removed again.

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm.create vm1
        salt hostA pairvm.create vm1 test=True
    """
    record = pillar_record(name)
    host = _host()
    if host.me not in record["hosts"]:
        raise Failed(f"this host ({host.me}) is not one of VM {name}'s pair")
    if not _drbd_options().get("shared_secret"):
        raise Failed(f"no DRBD shared secret for VM {name}'s pair: DRBD peers must authenticate. The "
                     f"master's ext_pillar pairvm_registry serves the one it generates for each pair "
                     f"(is it configured? salt-run pairvm.allocate makes it); or set "
                     f"pairvm:drbd_options:shared_secret in pillar")
    with host.lock(name):
        plan = host.plan(name, test)
        try:
            _create_steps(host, plan, record)
        except Exception:
            if not test:
                _rollback(host, plan, record)
            raise
        return plan.result(f"VM {name} is present on {host.me}")


def _create_steps(host, plan, record):
    name, vg = record["name"], host.vg(record)
    lv = f"{vg}/{name}"
    lvs = host.lvs()
    new_lv = lv not in lvs
    elsewhere = [f"{other}/{name}" for other in host.setting("volume_groups") if f"{other}/{name}" in lvs]
    if new_lv and elsewhere:
        raise Failed(f"VM {name}'s disc on {host.me} is LV {elsewhere[0]}, not {lv}: its home changed "
                     f"without pairvm.swap, which moves the disc (put the old home back in pillar, then "
                     f"salt-run pairvm.swap {name}); or a swap is unfinished (salt-run pairvm.swap {name})")
    if new_lv:
        size = f"{record['disc_mib']}M"
        # force: ``--yes``. A new LV may sit on the extents of a removed one and
        # start with its old signatures (a DRBD super block, a file system): real
        # lvcreate then asks whether to wipe them and, with nobody to answer,
        # refuses. The LV is new: wiping them is right.
        plan.step(f"lvcreate -n {name} {vg} -L {size}", host.lvcreate, name, vg, size=size, force=True)
    elif lvs[lv] < record["disc_mib"]:
        raise Failed(
            f"LV {lv} is {lvs[lv]} MiB, smaller than VM {name}'s disc ({record['disc_mib']} MiB): "
            f"grow it with pairvm.resize"
        )
    options = _drbd_options()
    plan.write(os.path.join(layout.DRBD_DIR, "global_common.conf"), render.drbd_global_common(options), 0o600)
    changed = plan.write(layout.resource_path(name), render.drbd_resource(record, options), 0o600,
                         host.write_resource)
    if new_lv:
        plan.step(f"drbdadm create-md --force {name}", __salt__["drbd.create_md"], name)
    if host.drbd(name):
        if changed:  # the running resource takes the new file (a rotated secret, resync settings)
            plan.step(f"drbdadm adjust {name}", __salt__["drbd.adjust"], name)
    else:
        plan.step(f"drbdadm up {name}", __salt__["drbd.up"], name)
        if new_lv and record["home"] == host.me:
            plan.step(f"drbdadm primary --force {name}", __salt__["drbd.primary"], name, force=True)
            plan.step(f"drbdadm secondary {name}", __salt__["drbd.secondary"], name)
    plan.write(layout.machine_path(name), schema.dump_record(record))


def _rollback(host, plan, record):
    """Undo what a failed create did, newest first, keeping going on errors."""
    name, vg = record["name"], host.vg(record)
    undo = {
        f"drbdadm up {name}": lambda: __salt__["drbd.down"](name),
        f"lvcreate -n {name} {vg} -L {record['disc_mib']}M": lambda: host.lvremove(name, vg),
    }
    undo.update({
        f"write {path}": functools.partial(machines.put_back, path, previous, mode)
        for path, (previous, mode) in plan.saved.items()
    })
    for change in reversed(plan.changes):
        if change in undo:
            try:
                undo[change]()
            except Exception as exc:  # noqa: BLE001 - report and go on undoing
                log.error("pairvm: could not undo %r for %s: %s", change, name, exc)


@boundary.execution
def destroy(name, confirm=False, force=False, test=False, missing_ok=True):
    """
    Remove VM ``name`` from this host: domain, DRBD resource, LVs, config.

    The VM's disc on this host is lost: ``confirm=True`` is required. A
    running VM is refused unless ``force=True`` (it is then powered off).
    Its snapshots go with it: those ``split_brain_victim`` kept
    (``<vg>/<name>-sb-<time>``) and one a killed backup left
    (``<vg>/<name>-backup``); the result lists each LV removed. Nothing of
    it left here is success, so a destroy run again finishes; with
    ``missing_ok=False`` (the host command) it is refused as ``no VM NAME on
    this host``.

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm.destroy vm1 confirm=True
        salt hostA pairvm.destroy vm1 confirm=True force=True
    """
    hostlib.check_name(name)
    if confirm is not True:
        raise Failed(f"destroying VM {name} deletes its disc on this host: pass confirm=True")
    host = _host()
    with host.lock(name):
        plan = host.plan(name, test)
        with host.libvirt() as conn:
            dom = host.domain(conn, name)
            running = dom is not None and dom.isActive()
            if running and not force:
                raise Failed(f"VM {name} is running here: stop it first, or force=True")
            if running:
                _power_off(plan, dom, name)
            if dom is not None:
                plan.step(f"virsh undefine {name}", dom.undefine)
        if host.drbd(name):
            plan.step(f"drbdadm down {name}", __salt__["drbd.down"], name)
        res_path = layout.resource_path(name)
        if os.path.exists(res_path):
            plan.step(f"rm {res_path}", os.unlink, res_path)
        for vg, lv in _lvs_of(host, name):
            plan.step(f"lvremove {vg}/{lv}", host.lvremove, lv, vg)
        for path in (layout.machine_path(name), os.path.join(layout.SUPPRESS_DIR, name),
                     layout.seed_path(name)):
            if os.path.exists(path):
                plan.step(f"rm {path}", os.unlink, path)
        if not plan.changes and not missing_ok:  # nothing was here, so nothing was done
            raise Failed(machines.no_vm(name))
        return plan.result(f"VM {name} is absent from {host.me}")


def _lvs_of(host, name):
    """[(vg, lv)] of VM ``name`` in pairvm's volume groups: the snapshots of its disc
    (they hold its data), then the disc itself (LVM wants the snapshots gone first)."""
    discs = [vg for vg in host.setting("volume_groups") if f"{vg}/{name}" in host.lvs()]
    if not discs:
        return []
    snapshots = host.snapshots()
    return [(vg, snap) for vg in discs for snap in snapshots.get(f"{vg}/{name}", [])] + \
        [(vg, name) for vg in discs]


# --- start / stop ---------------------------------------------------------------------------


@boundary.execution
def start(name, away=False, disconnected=False, test=False):
    """
    Start VM ``name`` on this host.

    Only on its home host unless ``away=True``. DRBD must be Connected with
    the local disc UpToDate, unless ``disconnected=True`` (the local disc must
    still be UpToDate). Promotes DRBD, defines and starts the libvirt domain
    (disc on /dev/drbdN, NIC on the VM's bridge, VNC on 127.0.0.1, a serial
    console with a log), then announces the VM's IP with a gratuitous ARP.

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm.start vm1
        salt hostB pairvm.start vm1 away=True
        salt hostA pairvm.start vm1 disconnected=True
    """
    host = _host()
    record = host.machine(name)
    with host.lock(name):
        plan = host.plan(name, test)
        if name in host.running(cached=True):  # this job's one query: no connection per VM
            return plan.result(f"VM {name} is already running on {host.me}")
        with host.libvirt() as conn:
            dom = host.domain(conn, name)
            if dom is not None and dom.isActive():
                return plan.result(f"VM {name} is already running on {host.me}")
            _check_may_start(host, record, away, disconnected)
            seed = machines.seed(name)
            if seed:  # left by pairvm.image: the guest's first boot reads it
                record = dict(record, cdrom=seed)
            if record["cdrom"]:
                try:
                    host.check_cdrom(record["cdrom"])
                except Failed as exc:
                    raise Failed(f"{exc}: VM {name} boots with it; copy it there, or eject it "
                                 f"(pairvm cdrom {name} eject)") from exc
            promote = host.drbd(name).get("role") != "Primary"
            if promote:
                plan.step(f"drbdadm primary {name}", __salt__["drbd.primary"], name)
            # A defined domain is redefined with the record's settings under its UUID.
            uuid = {"uuid": dom.UUIDString()} if dom is not None else {}
            xml = render.domain_xml(record, layout.SERIAL_LOG_DIR, uuid)
            try:
                plan.step(f"virsh define <domain {name}> && virsh start {name}", _define_and_start, conn, xml)
            except hostlib.libvirt.libvirtError as exc:
                if promote:
                    __salt__["drbd.secondary"](name)
                raise Failed(f"libvirt could not start VM {name}: {exc}") from exc
        plan.step(f"gratuitous ARP for {record['ip']} ({record['mac']}) on {record['bridge']}",
                  _announce, record)
        return plan.result(f"VM {name} is running on {host.me}")


def _check_may_start(host, record, away, disconnected):
    name, me = record["name"], host.me
    if record["home"] != me and not away:
        raise Failed(f"VM {name}'s home is {record['home']}, not {me}: pass away=True to run it here")
    drbd = host.drbd(name)
    if not drbd:
        raise Failed(f"DRBD resource {name} is not up on {me}: run pairvm.autostart")
    if drbd.get("split_brain"):
        raise Failed(
            f"DRBD resource {name} is StandAlone after a split brain: both hosts wrote to the disc. "
            f"Choose the side whose changes to discard and run `pairvm split_brain_victim {name}` there"
        )
    if drbd.get("peer_role") == "Primary":
        raise Failed(f"VM {name}'s disc is Primary on the peer: stop it there first")
    if drbd.get("disk") != "UpToDate":
        raise Failed(
            f"VM {name}'s disc on {me} is {drbd.get('disk')}, not UpToDate: wait for the sync to finish"
        )
    if drbd.get("connection") != "Connected" and not disconnected:
        raise Failed(
            f"DRBD resource {name} is {drbd.get('connection')}, not Connected: the peer would not "
            f"receive the VM's writes. Pass disconnected=True to start it anyway"
        )


def _define_and_start(conn, xml):
    conn.defineXML(xml).create()


def _announce(record):
    """Gratuitous ARP for the VM's IP from its MAC, as the old tool did after a
    start or a move, so switches and neighbours learn where it is now.

    Sent from the host on the VM's behalf (iputils arping cannot: it binds the
    source address, which is the VM's, not the host's). A failure is logged:
    the VM runs anyway.
    """
    mac = bytes.fromhex(record["mac"].replace(":", ""))
    ip = socket.inet_aton(record["ip"])
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + ip + bytes(6) + ip
    try:
        _send_frame(record["bridge"], b"\xff" * 6 + mac + b"\x08\x06" + arp)
    except OSError as exc:
        log.warning("pairvm: gratuitous ARP for %s on %s failed: %s", record["ip"], record["bridge"], exc)


def _send_frame(interface, frame):
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((interface, 0))
        sock.send(frame)


@boundary.execution
def stop(name, graceful=False, timeout=60, test=False):
    """
    Stop VM ``name`` on this host, then demote its DRBD resource to Secondary.

    By default it is powered off at once; ``graceful=True`` sends an ACPI
    shutdown and waits up to ``timeout`` seconds, then fails (the VM keeps
    running) if the guest did not stop.

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm.stop vm1
        salt hostA pairvm.stop vm1 graceful=True timeout=120
    """
    hostlib.check_name(name)
    host = _host()
    with host.lock(name):
        plan = host.plan(name, test)
        if name in host.running(cached=True):  # this job's one query: no connection per stopped VM
            with host.libvirt() as conn:
                dom = host.domain(conn, name)
                if dom is not None and dom.isActive():
                    _power_off(plan, dom, name, graceful, timeout)
        elif not os.path.exists(layout.machine_path(name)):
            raise Failed(machines.no_vm(name))
        if host.drbd(name).get("role") == "Primary":
            plan.step(f"drbdadm secondary {name}", __salt__["drbd.secondary"], name)
        return plan.result(f"VM {name} is stopped on {host.me}")


def _power_off(plan, dom, name, graceful=False, timeout=60):
    """The step that stops a running domain: an ACPI shutdown waited for, or at once."""
    if graceful:
        plan.step(f"virsh shutdown {name} (wait {timeout}s)", _shutdown, dom, name, timeout)
    else:
        plan.step(f"virsh destroy {name}", dom.destroy)


def _shutdown(dom, name, timeout):
    dom.shutdown()
    deadline = time.monotonic() + float(timeout)
    while time.monotonic() < deadline:
        if not dom.isActive():
            return
        time.sleep(0.5)
    raise Failed(
        f"VM {name} did not shut down within {timeout}s (is acpid running in the guest?); "
        f"it is still running: stop it without graceful to power it off"
    )


# --- after a boot: autostart, suppress ---------------------------------------------------------


@boundary.execution
def suppress(name, on=True, test=False):
    """
    Keep VM ``name`` from being started by ``autostart`` on this host (or not).

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm.suppress vm1
        salt hostA pairvm.suppress vm1 on=False
        salt hostA pairvm.suppress vm1 on=False test=True
    """
    host = _host()
    host.machine(name)
    path = os.path.join(layout.SUPPRESS_DIR, name)
    plan = host.plan(name, test)
    if bool(on) == os.path.exists(path):
        return plan.result(f"suppress is already {'on' if on else 'off'}")
    if on:
        plan.step(f"touch {path}", machines.write_atomic, path,
                  "suppressed from autostart by pairvm suppress\n")
        return plan.result("suppressed from autostart")
    plan.step(f"rm {path}", os.unlink, path)
    return plan.result("autostart allowed again")


@boundary.execution
def autostart(test=False, connect_timeout=30):
    """
    Bring every VM of this host up after a boot.

    DRBD resources of all VMs come up (as Secondary); every VM homed here that
    should run, is not suppressed (pillar ``suppress`` or ``pairvm.suppress``)
    and is not running is started; a resource brought up here is given up to
    ``connect_timeout`` seconds to connect first (``start`` refuses a
    disconnected VM: start it with ``disconnected=True`` if the peer is gone).
    One VM whose resource or start fails does not stop the others. Returns
    one result per VM; the retcode is non-zero if one did not come up.

    CLI Example:

    .. code-block:: bash

        salt '*' pairvm.autostart
        salt '*' pairvm.autostart test=True
    """
    host = _host()
    results = {}
    records = host.machines()
    drbd = host.drbd() if records else {}
    running = host.running() if records else set()
    for name, record in records.items():
        results[name] = {"changes": [], "comment": "ok"}
        try:
            _autostart_one(host, name, record, name in drbd, name in running, results[name], test,
                           connect_timeout)
        except (Failed, CommandExecutionError) as exc:
            results[name]["comment"] = f"not started: {exc}"
            __context__["retcode"] = 1
    return results


def _autostart_one(host, name, record, resource_up, running, result, test, connect_timeout):
    if not resource_up:
        result["changes"].append(f"drbdadm up {name}")
        if not test:
            try:
                __salt__["drbd.up"](name)
            finally:
                host.forget_runtime()
    if not _wants_autostart(host, name, record) or running:
        return
    if test:
        _plan_autostart(name, resource_up, result)
        return
    if not resource_up:  # just brought up: give it time to connect
        _wait_for_connection(host, name, connect_timeout)
    result["changes"] += start(name)["changes"]


def _plan_autostart(name, resource_up, result):
    """test=True: the start's own commands, or, for a resource that autostart
    brings up first, that it would start once DRBD has connected."""
    if not resource_up:
        result["changes"].append(f"pairvm start {name} (once DRBD is Connected)")
        return
    try:
        result["changes"] += start(name, test=True)["changes"]
    except Exception as exc:  # noqa: BLE001 - start's refusal is the result
        result["comment"] = f"not started: {exc}"


def _wants_autostart(host, name, record):
    return (record.get("home") == host.me and record.get("state") == "running"
            and not record.get("suppress") and name not in machines.suppressed())


def _wait_for_connection(host, name, timeout):
    deadline = time.monotonic() + float(timeout)
    while host.drbd(name).get("connection") != "Connected" and time.monotonic() < deadline:
        time.sleep(0.5)
        host.forget_runtime()
