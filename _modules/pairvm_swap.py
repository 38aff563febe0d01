"""pairvm (rehoming): a host's part of ``salt-run pairvm.swap``, which makes the peer a
stopped VM's home.

Part of the ``pairvm`` execution module: this file shares its virtual name
and its gate (docs/architecture.md). The plan of each phase is
``pairvmlib.rehome``'s.

:depends: drbd-utils, lvm2
"""

import hashlib
import os

from pairvmlib import boundary, layout, machines, rehome, render, schema
from pairvmlib import host as hostlib
from pairvmlib.errors import Failed

__virtualname__ = boundary.VIRTUAL_NAME
__virtual__ = boundary.virtual  # the one gate of every pairvm file (docs/architecture.md)

CHUNK = 4 * 2**20  # bytes read and written at a time by the copy


def _host():
    return hostlib.Host.of(globals())


@boundary.execution
def swap(name, home, finish=False, resume=False, test=False):
    """
    This host's part of making ``home`` (a host of the VM's pair) the home of
    the stopped VM ``name``: ``salt-run pairvm.swap NAME`` runs it on both
    hosts at once, and records the new home on the master. Run alone it
    would leave the registry (and so the VM states) with the old home.

    The copy phase (default): ``drbdadm down``, a new LV of the same size in
    the other volume group (``here`` on the new home, ``there`` on the
    other host), this host's replica copied into it block by block with
    DRBD's internal meta data (progress reported like a backup's), then
    ``/machines/<name>`` with the new home, the resource file naming the new
    LV, and ``drbdadm up``: both hosts' copies hold the same DRBD data
    generation and connect without a resync. Refused while the VM runs on
    this host, and (unless ``resume=True``: the runner's swap is recorded as
    begun) unless DRBD is Connected with both discs UpToDate and neither
    Primary, or when the new LV exists already. ``finish=True``: once DRBD
    is Connected and UpToDate on the new LVs, removes the old LV. Each phase
    run again after an interruption finishes it; until the record has the
    new home the old LV is the disc and the copy is made again.

    Returns the steps (``changes``) and ``record_sha256``, the sha256 of
    this host's ``/machines/<name>`` before it.

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm.swap vm1 home=hostB test=True
        salt-run pairvm.swap vm1
    """
    host = _host()
    record = host.machine(name)
    target = rehome.moved_record(record, home)
    old_vg, new_vg = rehome.vgs(record, host.me, home)
    old_lv, new_lv = f"{old_vg}/{name}", f"{new_vg}/{name}"
    sha = hashlib.sha256(machines.record_bytes(name)).hexdigest()
    with host.lock(name):
        plan = host.plan(name, test)
        lvs = host.lvs()
        state = {"moved": record["home"] == home, "old_lv": old_lv in lvs, "new_lv": new_lv in lvs}
        if finish:
            drbd = host.drbd(name)
            state["in_sync"] = drbd.get("connection") == "Connected" and bool(drbd.get("up_to_date"))
            try:
                steps = rehome.finish_steps(state)
            except Failed as exc:
                raise Failed(f"the swap of VM {name} cannot finish on {host.me}: {exc}") from exc
            for _ in steps:
                plan.step(f"lvremove {old_lv}", host.lvremove, name, old_vg)
            result = plan.result(f"VM {name}'s disc on {host.me} is LV {new_lv}; its home is {home}")
        else:
            result = _copy_phase(host, plan, record, target, state, resume, (old_lv, new_lv))
        return {**result, "record_sha256": sha}


def _copy_phase(host, plan, record, target, state, resume, lvs):
    name, (old_lv, new_lv) = record["name"], lvs
    options = __salt__["config.get"]("pairvm:drbd_options", {}) or {}
    if not options.get("shared_secret"):
        raise Failed(f"no DRBD shared secret for VM {name}'s pair in this host's pillar: the resource "
                     f"file cannot be rendered (the master's ext_pillar pairvm_registry serves it)")
    with host.libvirt() as conn:
        state["running"] = host.is_running(conn, name)
    drbd = host.drbd(name)
    state.update(drbd_up=bool(drbd), resume=bool(resume))
    text = render.drbd_resource(target, options)
    state["res_current"] = machines.read_text(layout.resource_path(name)) == text
    try:
        steps = rehome.copy_steps(state)
    except Failed as exc:
        raise Failed(f"VM {name} cannot move home on {host.me}: {exc}") from exc
    if not state["moved"] and not resume:
        _check_replicated(host, name, drbd)
    mib = host.lvs().get(old_lv)
    if state["new_lv"] and "copy" in steps:
        rehome.check_sizes(old_lv, mib, new_lv, host.lvs()[new_lv])
    new_vg = new_lv.split("/")[0]
    actions = {
        "down": lambda: plan.step(f"drbdadm down {name}", __salt__["drbd.down"], name),
        "create_new": lambda: plan.step(f"lvcreate -n {name} {new_vg} -L {mib}M", _create, host, name,
                                        old_lv, new_lv, mib),
        "copy": lambda: plan.step(f"copy /dev/{old_lv} to /dev/{new_lv} ({mib} MiB, with DRBD's meta data)",
                                  _copy, host, name, old_lv, new_lv, mib),
        "write_record": lambda: plan.write(layout.machine_path(name), schema.dump_record(target)),
        "write_res": lambda: plan.write(layout.resource_path(name), text, 0o600, host.write_resource),
        "up": lambda: plan.step(f"drbdadm up {name}", __salt__["drbd.up"], name),
    }
    for step in steps:
        actions[step]()
    return plan.result(f"VM {name}'s disc on {host.me} is LV {new_lv}, its DRBD resource up on it; "
                       f"the old LV {old_lv} stays until the swap finishes")


def _check_replicated(host, name, drbd):
    """Before a swap begins: both discs UpToDate and connected, neither Primary."""
    if not drbd:
        raise Failed(f"DRBD resource {name} is not up on {host.me}: bring it up (pairvm autostart) and "
                     f"let it connect first")
    if "Primary" in (drbd.get("role"), drbd.get("peer_role")):
        where = "this host" if drbd.get("role") == "Primary" else "the peer"
        raise Failed(f"VM {name}'s disc is Primary on {where}: is it running? Stop it (or live-migrate it: "
                     f"pairvm swaplive) first")
    if drbd.get("connection") != "Connected" or not drbd.get("up_to_date"):
        raise Failed(f"DRBD resource {name} is {drbd.get('connection')} with discs {drbd.get('disk')}/"
                     f"{drbd.get('peer_disk')}: a swap copies each host's replica, so both must be "
                     f"Connected and UpToDate (reconnect, or wait for the sync)")


def _create(host, name, old_lv, new_lv, mib):
    # force: ``--yes``, as create: the new LV may start with a removed LV's signatures.
    host.lvcreate(name, new_lv.split("/")[0], size=f"{mib}M", force=True)
    rehome.check_sizes(old_lv, mib, new_lv, host.lvs()[new_lv])


def _copy(host, name, old_lv, new_lv, mib):
    """Copy the whole old LV into the new one (every byte: the new LV's extents may hold
    old data) and flush it, reporting progress."""
    total = mib * 2**20
    report = host.reporter("swap", name, total, phase="copy")
    done = 0
    with open(layout.lv_device(old_lv), "rb", buffering=0) as src, \
            open(layout.lv_device(new_lv), "r+b", buffering=0) as dst:
        while done < total:
            chunk = src.read(min(CHUNK, total - done))
            if not chunk:
                raise Failed(f"/dev/{old_lv} ended after {done} of {total} bytes")
            view = memoryview(chunk)
            while view:
                view = view[dst.write(view):]
            done += len(chunk)
            report(done)
        dst.flush()
        os.fsync(dst.fileno())
    report(done, final=True)
