"""pairvm (backups): back a VM's disc up over SSH, restore it, check a backup.

Part of the ``pairvm`` execution module: this file shares its virtual name
and its gate (docs/architecture.md). The pure pieces are in
``pairvmlib.backup`` (remote scripts, argv, eligibility, settings), the
process pipeline in ``pairvmlib.transfer``.

:depends: lvm2, drbd-utils, pv, pigz, zstd, openssl, openssh-client, util-linux (setpriv)
"""

import contextlib
import functools
import os
import subprocess

from pairvmlib import backup as bk
from pairvmlib import backupstate, boundary, layout, transfer
from pairvmlib import host as hostlib
from pairvmlib.errors import Failed
from salt.exceptions import CommandExecutionError

__virtualname__ = boundary.VIRTUAL_NAME
__virtual__ = boundary.virtual  # the one gate of every pairvm file (docs/architecture.md)


def _host():
    return hostlib.Host.of(globals())


def _settings(host, **overrides):
    """Pillar ``pairvm:backup`` (else the copy ``pairvm.config`` keeps in
    /machines/_global) with defaults, then the call's own non-None arguments."""
    raw = __salt__["config.get"]("pairvm:backup", None)
    if raw is None:  # no master: this host's view
        raw = host.view().get("backup", {})
    settings = bk.settings(raw)
    given = {key: value for key, value in overrides.items() if value is not None}
    if given:
        settings = bk.settings({**settings, **given, "schedule": {}})
    return settings


@boundary.execution
def backup_settings():
    """
    The backup settings of this host: pillar ``pairvm:backup`` validated, with
    defaults, or (without a master) the copy the ``pairvm.config`` state keeps
    in /machines/_global. ``schedule`` is ``{id: {name, destination, speed,
    compress, cron}}`` (``name``: ``all`` or a comma-separated list of VMs),
    what the state ``pairvm.host.backup`` turns into scheduler jobs.

    CLI Example:

    .. code-block:: bash

        salt '*' pairvm.backup_settings
    """
    return bk.with_job_names(_settings(_host()))


# --- backup ---------------------------------------------------------------------------------


class _NotHere(Failed):
    """This host must not back the VM up (``why``): an error for one VM, a skip in ``all``."""

    def __init__(self, name, me, why):
        super().__init__(f"VM {name} is not backed up on {me}: {why}")
        self.why = why


@boundary.execution
def backup(name, destination, speed=None, compress=None, on_running_host=False, test=False):
    """
    Back VM ``name`` up to ``destination`` over SSH: snapshot, compress, send.

    ``name`` is one VM, ``all`` (every VM this host should back up) or a
    comma-separated list. ``destination`` is ``user@host:/path``; ``_NAME``
    in it becomes the VM's name (required for ``all`` or a list). Runs on
    the host that is NOT running the VM (its disc there is the DRBD
    replica); on the running host only with ``on_running_host=True``; a VM
    running nowhere is backed up by its home host (``salt-run
    pairvm.backup`` picks the host for each VM).

    The backup's one SSH connection is opened first: an unreachable backup
    host, a missing or refused key or an unwritable directory are refused
    then, before the snapshot is taken, and nothing changes. The disc's
    snapshot is read at no more than ``speed`` KiB/s (default pillar
    ``pairvm:backup:speed``; 0 = no limit), compressed with pigz (gzip) or
    zstd (``compress=zstd``), written on the backup host to
    ``PATH.partial`` and renamed to PATH only when the sha256 the backup
    host computed of what it stored equals that of the stream sent;
    ``PATH.sha256`` is stored beside it. The snapshot is removed in every
    case. Progress: event ``pairvm/backup/<vm>/progress``.

    With ``all`` or a list, VMs this host must not back up are skipped with
    the reason, and one VM's failure does not stop the others; the result
    lists each VM, and the job fails if one failed.

    SSH: batch mode, key pairvm:backup:key, known hosts
    pairvm:backup:known_hosts, port pairvm:backup:port.

    CLI Example:

    .. code-block:: bash

        salt hostB pairvm.backup vm1 backup@store:/backup/vm1.gz 1024
        salt hostB pairvm.backup all backup@store:/backup/_NAME.gz speed=0 compress=zstd
        salt hostA pairvm.backup vm1 backup@store:/backup/vm1.gz on_running_host=True
    """
    host = _host()
    settings = _settings(host, speed=speed, compress=compress)
    names = str(name).split(",") if name != "all" else sorted(host.machines())
    for vm in names:
        hostlib.check_name(vm)
    bk.parse_destination(destination, names[0] if names else None)
    bk.check_one_each(destination, "all" if name == "all" else names)
    if name != "all" and len(names) == 1:
        return _backup_one(host, host.machine(name), destination, settings, on_running_host, test)
    return _backup_many(host, names, destination, settings, on_running_host, test)


def _backup_many(host, names, destination, settings, on_running_host, test):
    report, changes = {}, []
    for vm in names:
        try:
            done = _backup_one(host, host.machine(vm), destination, settings, on_running_host, test)
            report[vm] = {"result": True, **{k: v for k, v in done.items() if k != "name"}}
            changes += done["changes"]
        except _NotHere as exc:
            report[vm] = {"result": None, "comment": f"skipped: {exc.why}"}
        except (Failed, CommandExecutionError) as exc:
            report[vm] = {"result": False, "comment": str(exc)}
    failed = sorted(vm for vm, r in report.items() if r["result"] is False)
    done = sorted(vm for vm, r in report.items() if r["result"])
    if failed:
        __context__["retcode"] = 1
    comment = f"backed up: {', '.join(done) or 'none'}" + (f"; FAILED: {', '.join(failed)}" if failed else "")
    return {"name": ",".join(names), "changes": changes, "comment": comment, "vms": report}


@backupstate.recorded  # the backup state file of the metrics
def _backup_one(host, record, destination, settings, on_running_host, test):
    name, me = record["name"], host.me
    dest = bk.parse_destination(destination, name)
    why = bk.eligible(record, me, name in host.running(), host.drbd(name), on_running_host)
    if why:
        raise _NotHere(name, me, why)
    vg = host.vg(record)
    origin, snap = f"{vg}/{name}", bk.snapshot_name(name)
    if origin not in host.lvs():
        raise Failed(f"VM {name}'s LV {origin} does not exist on {me}")
    size = bk.drbd_data_bytes(host.lvs()[origin] * 2**20)
    snapshot_size = bk.snapshot_size_kwarg(settings["snapshot_size"])
    size_option = f"{'-l' if 'extents' in snapshot_size else '-L'} {next(iter(snapshot_size.values()))}"
    plan = host.plan(name, test)
    connection = contextlib.nullcontext() if test else transfer.Upload(dest, settings)
    with host.lock(name), transfer.sigterm_interrupts():
        left = f"{vg}/{snap}" in host.lvs()
        if left:
            _check_left_snapshot(host, vg, name, snap)
        with connection as upload:  # the backup host, key and directory checked: before any change
            if left:
                plan.step(f"lvremove -f {vg}/{snap} (left by an interrupted backup)", host.lvremove, snap, vg)
            plan.step(f"lvcreate -s -n {snap} {size_option} {origin}",
                      host.lvcreate, snap, vg, snapshot=name, **snapshot_size)
            try:
                speed = f"-L {settings['speed']}k " if settings["speed"] else ""
                sent = plan.step(
                    f"pv {speed}/dev/{vg}/{snap} ({size} bytes) | {settings['compress']} | tee >(sha256) "
                    f"| ssh -i {settings['key']} {dest['user']}@{dest['host']} > {dest['path']}.partial "
                    f"(one connection, opened before the snapshot), both sha256 compared, "
                    f"rename to {dest['path']} (+ .sha256)",
                    transfer.Upload.send, upload, name, f"/dev/{vg}/{snap}", size,
                    functools.partial(_snapshot_valid, host, f"{vg}/{snap}"), host.reporter)
            finally:
                plan.step(f"lvremove -f {vg}/{snap}", host.lvremove, snap, vg)
    result = plan.result(f"VM {name} backed up to {transfer.dest_text(dest)}")
    if sent:
        result.update(sent, destination=transfer.dest_text(dest))
    return result


def _check_left_snapshot(host, vg, name, snap):
    """An LV named like the backup snapshot must be one (of this VM's disc) before it
    is removed: another VM may be called ``<name>-backup``."""
    if snap not in host.snapshots().get(f"{vg}/{name}", []):
        raise Failed(f"LV {vg}/{snap} exists and is not a snapshot of {vg}/{name} (another VM's disc?): "
                     f"pairvm cannot take its backup snapshot under that name; nothing was changed")


def _snapshot_valid(host, snap_lv):
    """Refuse a snapshot that overflowed while it was read (its data is lost)."""
    rows = host.lv_report(("lv_full_name", "lv_snapshot_invalid", "snap_percent"), snap_lv)
    if not rows:
        raise Failed(f"cannot read the state of snapshot {snap_lv}: lvs lists no such LV")
    if rows[0].get("lv_snapshot_invalid") or rows[0].get("snap_percent", "").startswith("100"):
        raise Failed(
            f"snapshot {snap_lv} overflowed while it was read ({rows[0]}): raise pairvm:backup:snapshot_size"
        )


# --- verify_backup, restore ------------------------------------------------------------------


@boundary.execution
def verify_backup(source, name=None):
    """
    Check a backup's integrity without restoring it.

    Reads ``source`` (``user@host:/path``; ``_NAME`` becomes ``name``) from
    the backup host, compares its sha256 with the ``.sha256`` stored beside
    it and decompresses the whole stream (nothing is written). Raises with
    the reason when it is damaged. Progress: event
    ``pairvm/verify_backup/<name>/progress``.

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm.verify_backup backup@store:/backup/vm1.gz
        salt hostA pairvm.verify_backup backup@store:/backup/_NAME.gz name=vm1
    """
    if name is not None:
        hostlib.check_name(name)
    host = _host()
    src = bk.parse_destination(source, name)
    where = transfer.dest_text(src)
    with transfer.Fetch(src, _settings(host), check=False) as fetch:
        label = name or os.path.basename(src["path"])
        actual = fetch.receive("verify_backup", label, subprocess.DEVNULL, host.reporter)
    if actual != fetch.stored:
        raise Failed(f"{where} is damaged: its sha256 is {actual}, {src['path']}.sha256 says {fetch.stored}")
    return {"name": label, "source": where, "result": True, "sha256": actual,
            "compressed_bytes": fetch.size, "compression": fetch.compression,
            "comment": f"{where} is intact ({fetch.compression}, sha256 {actual})"}


@boundary.execution
def restore(name, source, confirm=False, test=False):
    """
    Write a backup onto VM ``name``'s disc, replacing everything on it.

    Runs on the VM's home host while the VM is stopped on both hosts and
    DRBD is Connected with both discs UpToDate: the disc is written through
    this host's DRBD Primary, so the peer receives every byte. The backup
    host first checks the file against its ``.sha256``; the stream is
    checked again as it arrives. ``source`` is ``user@host:/path``
    (``_NAME`` becomes ``name``). Needs ``confirm=True``. Progress: event
    ``pairvm/restore/<name>/progress``.

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm.restore vm1 backup@store:/backup/vm1.gz confirm=True
        salt hostA pairvm.restore vm2 backup@store:/backup/vm1.gz confirm=True test=True
    """
    host = _host()
    record = host.machine(name)
    settings = _settings(host)
    src = bk.parse_destination(source, name)
    if not confirm and not test:
        raise Failed(f"restore overwrites VM {name}'s whole disc on both hosts: pass confirm=True")
    where = transfer.dest_text(src)
    with host.lock(name), transfer.sigterm_interrupts(), contextlib.ExitStack() as stack:
        _check_may_restore(host, record)
        plan = host.plan(name, test)
        fetch = plan.step(f"ssh {src['user']}@{src['host']}: sha256 of {src['path']} against its .sha256, "
                          f"then the file", stack.enter_context, transfer.Fetch(src, settings, check=True))
        device = layout.drbd_device(record["drbd_minor"])
        plan.step(f"drbdadm primary {name}", __salt__["drbd.primary"], name)
        try:
            got = plan.step(f"ssh {src['user']}@{src['host']} cat {src['path']} | tee >(sha256) "
                            f"| decompress > {device}", _restore_stream, host, name, fetch, device)
        finally:
            plan.step(f"drbdadm secondary {name}", __salt__["drbd.secondary"], name)
        if fetch and got != fetch.stored:
            raise Failed(
                f"the stream from {where} had sha256 {got}, not {fetch.stored}: VM {name}'s disc "
                f"holds damaged data now; restore again"
            )
    return plan.result(f"VM {name}'s disc restored from {where} on both hosts")


def _check_may_restore(host, record):
    name = record["name"]
    if record["home"] != host.me:
        raise Failed(f"restore VM {name} on its home host {record['home']}, not on {host.me}")
    if name in host.running():
        raise Failed(f"VM {name} is running on {host.me}: stop it first")
    if host.check_peer_receives(record, "the restored disc").get("role") == "Primary":
        raise Failed(f"VM {name}'s disc is Primary on {host.me} (is it running?): stop it first")


def _restore_stream(host, name, fetch, device):
    fd = os.open(device, os.O_WRONLY)
    try:
        got = fetch.receive("restore", name, fd, host.reporter)
        os.fsync(fd)
    finally:
        os.close(fd)
    return got
