"""pairvm (storage): grow a VM's disc, resolve a DRBD split brain.

Part of the ``pairvm`` execution module: this file shares its virtual name
and its gate (docs/architecture.md).

:depends: drbd-utils, lvm2
"""

import time

from pairvmlib import boundary, layout, schema
from pairvmlib import host as hostlib
from pairvmlib.errors import Failed

__virtualname__ = boundary.VIRTUAL_NAME
__virtual__ = boundary.virtual  # the one gate of every pairvm file (docs/architecture.md)


def _host():
    return hostlib.Host.of(globals())


# --- resize ---------------------------------------------------------------------------------


@boundary.execution
def resize(name, size, test=False):
    """
    Grow VM ``name``'s LV on this host to ``size`` (e.g. ``20G``); never shrink.

    On the VM's home host, DRBD is then told to use the new size (run it on
    the peer first, or use ``salt-run pairvm.resize`` which does both hosts
    in order). This host's record ``/machines/<name>`` then says the new
    size. Only ``salt-run pairvm.resize`` also records it on the master (the
    registry), which the VM states rewrite the record from: after resizing
    host by host (e.g. while the master is down), run it once the master is
    back; it finds both LVs grown and only records the size.

    CLI Example:

    .. code-block:: bash

        salt hostB pairvm.resize vm1 20G
        salt hostA pairvm.resize vm1 20G
    """
    host = _host()
    record = host.machine(name)
    new_mib = schema.parse_size_mib(size)
    lv = f"{host.vg(record)}/{name}"
    with host.lock(name):
        plan = host.plan(name, test)
        current = host.lvs().get(lv)
        if current is None:
            raise Failed(f"LV {lv} does not exist on {host.me}")
        if new_mib < current:
            raise Failed(
                f"VM {name}'s disc is {current} MiB; shrinking it to {new_mib} MiB would cut off data: "
                f"pairvm only grows discs"
            )
        if not host.drbd(name):
            # DRBD 8.4 keeps its metadata at the end of the LV: it must be
            # attached while the LV grows, to move the metadata along.
            raise Failed(
                f"DRBD resource {name} is not up on {host.me}: bring it up (pairvm autostart) before resizing"
            )
        if new_mib > current:
            plan.step(f"lvextend -L {new_mib}M /dev/{lv}", host.lvextend, lv, new_mib)
        if record["home"] == host.me and _drbd_mib(host, record) < new_mib - _drbd_metadata_mib(new_mib):
            _drbd_resize_steps(host, plan, name)
        plan.write(layout.machine_path(name), schema.dump_record({**record, "disc_mib": new_mib}))
        return plan.result(f"VM {name}'s disc on {host.me} is {new_mib} MiB")


def _drbd_resize_steps(host, plan, name):
    """DRBD 8.4 resizes only with a Primary: a stopped VM's home is promoted for it."""
    state = host.drbd(name)
    promote = "Primary" not in (state.get("role"), state.get("peer_role"))
    if promote:
        plan.step(f"drbdadm primary {name}", __salt__["drbd.primary"], name)
    plan.step(f"drbdadm resize {name}", __salt__["drbd.resize"], name)
    if promote:
        plan.step(f"drbdadm secondary {name}", __salt__["drbd.secondary"], name)


def _drbd_metadata_mib(disc_mib):
    """Upper bound of DRBD 8.4's internal metadata on a disc, in whole MiB:
    a bitmap bit per 4 KiB, a 32 KiB activity log, a 4 KiB superblock."""
    return -(-(disc_mib * 32 + 36 * 1024) // 2**20) + 1


def _drbd_mib(host, record):
    """Size of the DRBD device (what the VM sees), in MiB; 0 when it is not up."""
    res = __salt__["cmd.run_all"](
        ["blockdev", "--getsize64", layout.drbd_device(record["drbd_minor"])],
        python_shell=False, ignore_retcode=True,
    )
    return int(res["stdout"]) // 2**20 if res["retcode"] == 0 else 0


# --- split brain -----------------------------------------------------------------------------


@boundary.execution
def split_brain_victim(name, snapshot_size=None, snapshot=True, test=False):
    """
    Resolve a DRBD split brain of VM ``name`` by discarding THIS host's changes.

    Run it on the host whose writes since the split are to be dropped (the
    other host's data survives). Refused unless DRBD reports a split brain
    here (StandAlone, marked by the kernel's split-brain handler), and while
    the VM runs on this host. First keeps this host's data: an LVM snapshot
    ``<vg>/<name>-sb-<UTC time>`` of the backing LV, ``snapshot_size`` (e.g.
    ``2G``; default the disc's full size, so it can never overflow) unless
    ``snapshot=False`` is passed explicitly. Then demotes the resource if
    needed and connects it with ``--discard-my-data``; the resync from the
    peer starts when the peer connects too (``drbdadm connect NAME`` there;
    ``salt-run pairvm.split_brain_victim NAME HOST`` does both hosts).
    ``destroy`` removes the kept snapshots with the VM.

    CLI Example:

    .. code-block:: bash

        salt hostB pairvm.split_brain_victim vm1
        salt hostB pairvm.split_brain_victim vm1 snapshot_size=2G
        salt hostB pairvm.split_brain_victim vm1 snapshot=False
        salt hostB pairvm.split_brain_victim vm1 test=True
    """
    host = _host()
    record = host.machine(name)
    if snapshot not in (True, False):
        raise Failed(f"snapshot must be True or False, not {snapshot!r}")
    if not snapshot and snapshot_size is not None:
        raise Failed("snapshot_size was given with snapshot=False: pass one or the other")
    vg = host.vg(record)
    with host.lock(name):
        plan = host.plan(name, test)
        _check_victim(host, record)
        if snapshot:
            disc_mib = host.lvs().get(f"{vg}/{name}")
            if disc_mib is None:
                raise Failed(f"LV {vg}/{name} does not exist on {host.me}: nothing to keep")
            mib = disc_mib if snapshot_size is None else schema.parse_size_mib(snapshot_size, 1)
            snap = f"{name}-sb-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}"
            plan.step(f"lvcreate -s -n {snap} -L {mib}M {vg}/{name}",
                      host.lvcreate, snap, vg, snapshot=name, size=f"{mib}M")
        if host.drbd(name).get("role") == "Primary":
            plan.step(f"drbdadm secondary {name}", __salt__["drbd.secondary"], name)
        plan.step(f"drbdadm connect --discard-my-data {name}", __salt__["drbd.connect"], name,
                  discard_my_data=True)
        kept = f"this host's data is kept in LV {vg}/{snap}; " if snapshot else ""
        other = host.other_host(record)
        return plan.result(
            f"VM {name}'s changes on {host.me} are discarded: {kept}it resyncs from {other} "
            f"once {other} connects (there: drbdadm connect {name}, if it is StandAlone)"
        )


def _check_victim(host, record):
    name = record["name"]
    with host.libvirt() as conn:
        if host.is_running(conn, name):
            raise Failed(
                f"VM {name} is running on {host.me}: this host's disc is in use. Stop it first if this "
                f"host's changes are the ones to discard, or run split_brain_victim on "
                f"{host.other_host(record)}"
            )
    drbd = host.drbd(name)
    if not drbd:
        raise Failed(f"DRBD resource {name} is not up on {host.me}: nothing to resolve")
    if not drbd.get("split_brain"):
        raise Failed(
            f"DRBD resource {name} on {host.me} is {drbd.get('connection')} with its disc "
            f"{drbd.get('disk')}, not in split brain: nothing is discarded. If it is StandAlone after a "
            f"disconnect, connect it (drbdadm connect {name}); DRBD reports a split brain if there is one"
        )
