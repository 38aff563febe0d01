"""Rehoming (``pairvm.swap``): the peer becomes a stopped VM's home (pure, no I/O).

Each host copies its own replica of the disc, DRBD's internal meta data
included, from the LV of the VG it has now into a new LV of the same size
in the other VG (``here`` <-> ``there``), with the resource down on both
hosts. Brought up on the copies, the two sides find the same data
generation (DRBD's UUIDs are in the copied meta data) and connect without a
resync. The old LVs are removed only once the new resource is Connected and
UpToDate on both hosts.

A host's part is split in two phases, each planned here from what the host
finds (``state``), so that running it again after an interruption finishes
it:

- ``copy``: down the resource, create and fill the new LV, write
  ``/machines/<vm>`` with the new home (the phase's commit point: from then
  on the new LV is the disc; before it, a new run copies again) and the
  resource file naming the new LV, up again.
- ``finish``: remove the old LV once DRBD is Connected and UpToDate.

The runner (``salt-run pairvm.swap``) runs both hosts' phases at once and
keeps the swap in the pair's registry until both are finished.
"""

from pairvmlib.errors import Failed, Invalid


def moved_record(record, home):
    """VM ``record`` with ``home`` (a host of its pair) as its home: home and peer
    swapped, and each host's VG the other one (``here`` on the new home)."""
    hosts = record["hosts"]
    if home not in hosts:
        raise Invalid(f"home: {home!r} is not a host of VM {record['name']}'s pair "
                      f"({', '.join(sorted(hosts))})")
    if home == record["home"]:
        return dict(record)
    here, there = hosts[record["home"]]["vg"], hosts[record["peer"]]["vg"]
    return {**record, "home": home, "peer": record["home"],
            "hosts": {minion: {**value, "vg": here if minion == home else there}
                      for minion, value in hosts.items()}}


def vgs(record, me, home):
    """(old VG, new VG) of host ``me`` when ``home`` becomes the home of ``record``'s VM
    (``record`` is the host's record, before or after the move)."""
    other = next(m for m in record["hosts"] if m != me)
    mine, its = record["hosts"][me]["vg"], record["hosts"][other]["vg"]
    moved = record["home"] == home
    return (its, mine) if moved else (mine, its)


def check_sizes(old_lv, old_mib, new_lv, new_mib):
    """The copy keeps DRBD's internal meta data at the end of the LV: the new LV must be
    exactly as big as the old one."""
    if old_mib != new_mib:
        raise Failed(f"LV {new_lv} is {new_mib} MiB and LV {old_lv} {old_mib} MiB: DRBD keeps its meta "
                     f"data at the end of the LV, so the copy needs the same size (do the two volume "
                     f"groups have different extent sizes?)")


def copy_steps(state):
    """The steps of the copy phase on a host, from ``state``: ``running`` (the VM's
    domain is active here), ``old_lv``/``new_lv`` (those LVs exist), ``moved``
    (``/machines/<vm>`` already has the new home), ``drbd_up`` (the resource is up
    here), ``res_current`` (the resource file already names the new LV), ``resume``
    (the registry records this swap as begun: a new LV is one of its partial copies).

    Steps, in order: ``down``, ``create_new``, ``copy``, ``write_record``,
    ``write_res``, ``up``. Until the record has the new home the copy is made again
    (the old LV may have been used since an interrupted copy); from then on the new
    LV is the disc. Raises ``Failed`` when the host is in no state a swap leaves."""
    if state["running"]:
        raise Failed("it is running on this host: stop it (pairvm stop) or live-migrate it "
                     "(pairvm swaplive) first; pairvm swap moves a stopped VM's disc")
    if state["moved"]:
        if not state["new_lv"]:
            raise Failed("its record already has the new home but the new LV is missing: the disc is "
                         "still in the old LV if it exists; restore the record (state.apply pairvm.vms)")
        if state["res_current"]:
            return [] if state["drbd_up"] else ["up"]
        return (["down"] if state["drbd_up"] else []) + ["write_res", "up"]
    if not state["old_lv"]:
        raise Failed("its old LV is missing and its record still has the old home: nothing to copy")
    if state["new_lv"] and not state["resume"]:
        raise Failed("the LV it would move to exists already: it is not pairvm's (no swap of it is "
                     "recorded); remove it, or rename it, first")
    return (["down"] if state["drbd_up"] else []) + ([] if state["new_lv"] else ["create_new"]) + \
        ["copy", "write_record", "write_res", "up"]


def finish_steps(state):
    """The steps of the finish phase: ``remove_old`` when the old LV is still there,
    once ``moved`` and DRBD ``in_sync`` (Connected, both discs UpToDate); ``Failed``
    before."""
    if not state["moved"]:
        raise Failed("its copy phase has not finished on this host: run the swap again "
                     "(salt-run pairvm.swap)")
    if not state["in_sync"]:
        raise Failed("its DRBD resource is not Connected with both discs UpToDate on the new LVs: the old "
                     "LV is kept until it is")
    return ["remove_old"] if state["old_lv"] else []


def target(hosts, home, pending=None):
    """The host that becomes the home: the one a swap in progress (``pending``, the
    registry's ``{"to": host}``) names, else the other of ``hosts`` than ``home``."""
    if pending:
        return pending["to"]
    if home not in hosts:
        raise Failed(f"the VM's home {home!r} is not a host of its pair ({', '.join(hosts)})")
    return next(h for h in hosts if h != home)
