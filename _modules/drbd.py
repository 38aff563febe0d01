"""DRBD 8.4 resources, driven with drbd-utils (``drbdadm``, ``drbdsetup``).

Salt 3008 ships no DRBD module. This one wraps the few operations the pairvm
formula needs. Resources are described by ``/etc/drbd.d/<name>.res``; every
command is an argv list, never a shell string, and resource names are
validated before anything runs.

State is read with ONE command for all resources, ``drbdsetup events2 --now
all``, whose 8.4 lines look like::

    exists resource name:vm1 role:Primary suspended:no
    exists connection name:vm1 peer-node-id:0 conn-name:peer connection:Connected
        role:Secondary
    exists device name:vm1 volume:0 minor:3 disk:UpToDate
    exists peer-device name:vm1 peer-node-id:0 conn-name:peer volume:0
        replication:Established peer-disk:UpToDate resync-suspended:no
    exists -

(one line per object; wrapped here). With ``--statistics`` the device line
adds ``size: read: written:`` and the peer-device line ``received: sent:
out-of-sync:`` (KiB); ``status(statistics=True)`` returns them.

Split brain: DRBD 8.4 shows an unresolved split brain only as a StandAlone
connection, exactly like an administrative ``drbdadm disconnect`` (events2,
``drbdsetup show`` and the UUIDs tell them apart no better). What the kernel
does besides is call its usermode helper ``drbdadm split-brain minor-N``,
which runs the ``split-brain`` handler of the resource. The formula's
``global_common.conf`` (``pairvmlib.render.drbd_global_common``) sets that
handler to record the resource name as a file in ``layout.SPLIT_BRAIN_DIR``; a
resource is in split brain when it is StandAlone with a disk and marked so.
A new connection attempt (``connect``, ``up``) removes the mark: if the
kernel finds a split brain again, its handler marks it again.
"""

import os
import re

import salt.utils.path
from pairvmlib import drbdconf, layout
from salt.exceptions import CommandExecutionError, SaltInvocationError

__virtualname__ = "drbd"

NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,14}")


def __virtual__():
    if salt.utils.path.which("drbdadm") and salt.utils.path.which("drbdsetup"):
        return __virtualname__
    return (False, "drbd: drbdadm/drbdsetup not found; install drbd-utils")


def _name(name):
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise SaltInvocationError(
            f"invalid DRBD resource name {name!r}: expected [a-z][a-z0-9-]{{0,14}}")
    return name


def _run(argv, env=None, quiet=False):
    kwargs = {"python_shell": False, "ignore_retcode": True}
    if env:
        kwargs["env"] = env
    if quiet:  # the output holds the shared secret: never into the minion's log
        kwargs["output_loglevel"] = "quiet"
    ret = __salt__["cmd.run_all"](argv, **kwargs)
    if ret["retcode"] != 0:
        detail = (ret.get("stderr") or ret.get("stdout") or "").strip()
        raise CommandExecutionError(
            f"'{' '.join(argv)}' failed with exit code {ret['retcode']}: {detail}")
    return ret["stdout"]


def _adm(*args):
    _run(["drbdadm", *args])
    return True


STATISTICS = {"device": ("size", "read", "written"), "peer-device": ("received", "sent", "out-of-sync")}


def _parse_events(text, marked=()):
    """Parse events2 lines; ``marked``: resources the split-brain handler marked.
    Statistics fields (``--statistics``), when present, go to ``statistics`` in KiB."""
    res = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) < 3 or words[0] != "exists":
            continue
        kind = words[1]
        fields = dict(w.split(":", 1) for w in words[2:] if ":" in w)
        name = fields.pop("name", None)
        if name is None:
            continue
        r = res.setdefault(name, {
            "role": None, "peer_role": None, "connection": None, "replication": None,
            "disk": None, "peer_disk": None, "minor": None, "volume": None,
        })
        if kind == "resource":
            r["role"] = fields.get("role")
            r["suspended"] = fields.get("suspended")
        elif kind == "connection":
            r["connection"] = fields.get("connection")
            r["peer_role"] = fields.get("role")
        elif kind == "device":
            r["disk"] = fields.get("disk")
            r["minor"] = int(fields["minor"]) if "minor" in fields else None
            r["volume"] = int(fields["volume"]) if "volume" in fields else None
        elif kind == "peer-device":
            r["replication"] = fields.get("replication")
            r["peer_disk"] = fields.get("peer-disk")
        for key in STATISTICS.get(kind, ()):
            if fields.get(key, "").isdigit():
                r.setdefault("statistics", {})[key.replace("-", "_")] = int(fields[key])
    for name, r in res.items():
        # 8.4 has no split-brain state: after "Split-Brain detected but
        # unresolved" the kernel drops the connection (StandAlone, as after a
        # disconnect) and runs the split-brain handler, which marks it.
        r["standalone"] = r["connection"] == "StandAlone"
        r["split_brain"] = r["standalone"] and r["disk"] not in (None, "Diskless") and name in marked
        r["connected"] = r["connection"] == "Connected"
        r["syncing"] = (r["replication"] or "").startswith(("Sync", "PausedSync"))
        r["up_to_date"] = r["disk"] == "UpToDate" and r["peer_disk"] == "UpToDate"
    return res


def status(name=None, statistics=False):
    """
    State of all DRBD resources known to the kernel (one ``drbdsetup events2
    --now all`` call), or of one resource.

    Returns ``{resource: {role, peer_role, connection, replication, disk,
    peer_disk, minor, volume, connected, syncing, up_to_date, standalone,
    split_brain}}``. A resource that is down is absent. With ``name``, returns
    that resource's dict, or ``{}`` if it is down. ``split_brain`` is true for
    a StandAlone resource with a local disk that the kernel's split-brain
    handler marked (see the module docstring); a StandAlone resource after a
    plain ``disconnect`` is not a split brain. ``statistics=True`` asks the
    same one command with ``--statistics`` and adds ``statistics``: ``{size,
    read, written, received, sent, out_of_sync}`` in KiB (what the kernel
    reports of them).

    CLI Example:

    .. code-block:: bash

        salt '*' drbd.status
        salt '*' drbd.status vm1
        salt '*' drbd.status statistics=True
    """
    if name is not None:
        _name(name)
    argv = ["drbdsetup", "events2", "--now", *(["--statistics"] if statistics else []), "all"]
    res = _parse_events(_run(argv), _split_brain_marks())
    if name is not None:
        return res.get(name, {})
    return res


def _split_brain_marks():
    try:
        return set(os.listdir(layout.SPLIT_BRAIN_DIR))
    except FileNotFoundError:
        return set()


def _forget_split_brain(name):
    """A new connection attempt: the kernel marks the resource again if it
    still finds a split brain."""
    try:
        os.unlink(os.path.join(layout.SPLIT_BRAIN_DIR, name))
    except FileNotFoundError:
        pass


def create_md(name):
    """
    Initialise DRBD meta data on the resource's backing disk
    (``drbdadm create-md --force``; no prompt).

    CLI Example:

    .. code-block:: bash

        salt '*' drbd.create_md vm1
    """
    return _adm("create-md", "--force", _name(name))


def up(name):
    """
    Attach and connect the resource (``drbdadm up``). A split-brain mark of
    the resource is removed first (the kernel marks it again if the split
    brain is still there when it connects).

    CLI Example:

    .. code-block:: bash

        salt '*' drbd.up vm1
    """
    _forget_split_brain(_name(name))
    return _adm("up", name)


def down(name):
    """
    Disconnect and detach the resource (``drbdadm down``).

    CLI Example:

    .. code-block:: bash

        salt '*' drbd.down vm1
    """
    return _adm("down", _name(name))


def primary(name, force=False):
    """
    Promote the resource. ``force=True`` declares this side's data good
    (initial sync; ``drbdadm primary --force``): only for a new resource.

    CLI Example:

    .. code-block:: bash

        salt '*' drbd.primary vm1
        salt '*' drbd.primary vm1 force=True
    """
    return _adm("primary", *(["--force"] if force else []), _name(name))


def secondary(name):
    """
    Demote the resource (``drbdadm secondary``).

    CLI Example:

    .. code-block:: bash

        salt '*' drbd.secondary vm1
    """
    return _adm("secondary", _name(name))


def connect(name, discard_my_data=False):
    """
    Connect to the peer. ``discard_my_data=True`` makes this side the
    split-brain victim: it becomes SyncTarget and loses its changes (use
    ``pairvm.split_brain_victim``, which keeps a snapshot first). A
    split-brain mark of the resource is removed first, as for ``up``.

    CLI Example:

    .. code-block:: bash

        salt '*' drbd.connect vm1
        salt '*' drbd.connect vm1 discard_my_data=True
    """
    _forget_split_brain(_name(name))
    return _adm("connect", *(["--discard-my-data"] if discard_my_data else []), name)


def disconnect(name):
    """
    Disconnect from the peer (``drbdadm disconnect``).

    CLI Example:

    .. code-block:: bash

        salt '*' drbd.disconnect vm1
    """
    return _adm("disconnect", _name(name))


def resize(name):
    """
    Grow the resource to its backing disks (after ``lvextend`` on both hosts).

    CLI Example:

    .. code-block:: bash

        salt '*' drbd.resize vm1
    """
    return _adm("resize", _name(name))


def adjust(name):
    """
    Bring the running resource in line with its configuration file.

    CLI Example:

    .. code-block:: bash

        salt '*' drbd.adjust vm1
    """
    return _adm("adjust", _name(name))


def dry_run_up(name):
    """
    Return the commands ``drbdadm up`` would run, without running them
    (``drbdadm -d up``); fails if the configuration does not parse.

    CLI Example:

    .. code-block:: bash

        salt '*' drbd.dry_run_up vm1
    """
    return _run(["drbdadm", "-d", "up", _name(name)]).splitlines()


def check_config(path, node=None):
    """
    Parse a resource file with the real ``drbdadm -c PATH dump`` and return
    its normalised text. ``node`` checks it as that host would
    (``__DRBD_NODE__``), e.g. the peer's name.

    CLI Example:

    .. code-block:: bash

        salt '*' drbd.check_config /etc/drbd.d/vm1.res
        salt '*' drbd.check_config /tmp/vm1.res node=hostB
    """
    if not isinstance(path, str) or not path.startswith("/") or "\n" in path:
        raise SaltInvocationError(f"check_config needs an absolute path, not {path!r}")
    env = None
    if node is not None:
        if not isinstance(node, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]{0,62}", node):
            raise SaltInvocationError(f"invalid node name {node!r}")
        env = {"__DRBD_NODE__": node}
    return _run(["drbdadm", "-c", path, "dump"], env=env, quiet=True)


def peer_auth():
    """
    Whether each DRBD resource whose connection is configured authenticates
    its peer: ``{resource: True|False}``, True when the kernel's running
    configuration has ``cram-hmac-alg`` and a ``shared-secret`` (one
    ``drbdsetup show all`` for all resources). The secret itself is never
    returned or logged.

    CLI Example:

    .. code-block:: bash

        salt '*' drbd.peer_auth
    """
    return drbdconf.peer_auth(_run(["drbdsetup", "show", "all"], quiet=True))


def net_options(name, allow_two_primaries=False):
    """
    Allow or forbid two Primaries on the running resource (``drbdadm net-options
    --allow-two-primaries=yes|no``), for a live migration's window only: the
    resource file is not changed, so ``drbdadm adjust`` or a reboot forbids it again.

    CLI Example:

    .. code-block:: bash

        salt '*' drbd.net_options vm1 allow_two_primaries=True
        salt '*' drbd.net_options vm1
    """
    flag = "yes" if allow_two_primaries is True else "no"
    return _adm("net-options", f"--allow-two-primaries={flag}", _name(name))


def show(name):
    """
    The running configuration of the resource as the kernel has it (``drbdsetup show``).

    CLI Example:

    .. code-block:: bash

        salt '*' drbd.show vm1
    """
    return _run(["drbdsetup", "show", _name(name)], quiet=True)  # it holds the shared secret
