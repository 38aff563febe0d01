"""pairvm runner (from the hosts): what the host command runs on the master, and a VM's CD.

A pair host reaches the master through Salt's peer runner interface
(``salt-call publish.runner FUN arg="[...]"``, what the host command runs).
The master runs a runner function for a minion only when its ``peer_run``
setting allows that minion and that function (``peer_acl`` writes it, for
the functions ``host_create``, ``host_cdrom`` and ``host_chkconfig`` and
the pair hosts only); inside, ``__opts__["id"]`` is the calling minion's
id, which Salt's request channel checks against the minion's signed token.
Each ``host_*`` function acts only on the caller's own pair, and does what
the operator's form on the master does: ``pairvm.create``, ``pairvm.cdrom``,
``pairvm.verify``.

``cdrom`` records a VM's CD in the registry (served as pillar
``pairvm:cdroms``, so the next ``state.apply pairvm.vms`` keeps it) and
writes it into the VM's record on both hosts.
"""

import os

import salt.config.worker_pools
from pairvmlib import boundary, layout, machines, master, peer, registry, schema
from pairvmlib import verify as pair_verify
from pairvmlib.errors import Failed, PairvmError

__virtualname__ = "pairvm"


def __virtual__():
    return __virtualname__


_operation = boundary.converting(lambda exc: master.refused(__context__, exc))


def _master():
    return master.Master(__opts__)


def _call(minion, function, *args, **kwargs):
    return _master().call(minion, function, *args, **kwargs)


def _callers_pair(on_master):
    """(caller, its pillar pairvm, the pair's settings) of a host_* function: the caller must be
    a host of the pair its pillar defines (``on_master``: the runner to use on the master)."""
    caller = __opts__["id"]
    try:
        pairvm = _master().pillar(caller)
    except Failed:
        pairvm = {}
    settings = schema.settings(pairvm) if pairvm else {"pair": {}}
    if caller not in settings["pair"]:
        raise Failed(f"{caller} is not a host of a pair: the pairvm.host_* runners are for a pair "
                     f"host's command (publish.runner); on the master, use salt-run {on_master}")
    return caller, pairvm, settings


def _own_vm(caller, pairvm, name):
    schema.validate_name(name)
    if name not in schema.vms(pairvm):
        raise Failed(f"VM {name} is not a VM of {caller}'s pair")


# --- create from a host -----------------------------------------------------------------------


@_operation
def host_create(name, where, memory, disc, vcpus=None, ip=None):
    """
    Create VM ``name`` from a pair host, as ``pairvm.create`` does: ``where``
    ``here`` makes the calling host the VM's home, ``there`` its peer.

    For the host command ``pairvm create NAME here|there MEMORY DISC [--ip IP]
    [--vcpus N]`` (through ``publish.runner``; the peer_run ACL of
    ``pairvm.peer_acl``). ``memory`` in MiB, ``disc`` a size (``10G``). The
    result adds the VM's ``ip``, ``mac`` and ``vnc_display``. The same request
    again (Salt's request channel sends it anew when the answer takes over a
    minute) reports the VM once it is on both hosts with DRBD connected, and
    says a create may be under way otherwise; a different one for an
    existing name is refused.

    CLI Example:

    .. code-block:: bash

        salt-call publish.runner pairvm.host_create arg="[vm1, here, 1024, 10G]"
    """
    caller, pairvm, settings = _callers_pair("pairvm.create")
    if where not in ("here", "there"):
        raise Failed(f"where must be here or there, got {where!r}")
    home = caller if where == "here" else next(h for h in master.pair_hosts(settings) if h != caller)
    options = {key: value for key, value in (("vcpus", vcpus), ("ip", ip)) if value is not None}
    asked = {"home": home, "memory": memory, "disc": disc, **options}
    saved = registry.read(__opts__)["vms"].get(name) or {}
    if saved.get("definition") and _definition(name, asked, settings) == saved["definition"]:
        return _created(name, _already(name, home, master.pair_hosts(settings)))
    result = __salt__["pairvm.create"](name, home, memory, disc, **options)
    if "error" in result:
        raise Failed(result["error"])
    return _created(name, result)


def _definition(name, asked, settings):
    try:
        return schema.vm_definition(name, asked, settings)
    except PairvmError:  # not valid: not the same request; pairvm.create says why
        return None


def _already(name, home, hosts):
    """The same create again (Salt's request channel sends a request anew when its answer takes
    over a minute): the VM, when it is on both hosts with DRBD connected; else say so."""
    states = {host: _call(host, "drbd.status", name).get("connection") for host in hosts}
    if set(states.values()) != {"Connected"}:
        raise Failed(f"VM {name} is registered with these values, but its DRBD resource is "
                     + ", ".join(f"{state or 'down'} on {host}" for host, state in states.items())
                     + ": a create of it may still be under way, or failed; see salt-run pairvm.list "
                       "and salt-run jobs.active on the master")
    return {"name": name, "home": home, "comment": f"VM {name} exists already, as asked"}


def _created(name, result):
    alloc = registry.read(__opts__)["vms"][name]["alloc"]
    return {**result, **{key: alloc.get(key) for key in ("ip", "mac", "vnc_display")}}


# --- the CD of a VM, recorded on both hosts ------------------------------------------------------


@_operation
def cdrom(name, iso=None, eject=False, test=False):
    """
    Give VM ``name`` the CD ``iso`` (or none: ``eject=True``) on both hosts:
    recorded, so the next start on either host boots with it, and changed
    live where the VM runs.

    The ISO must be a file at the same absolute path on both hosts (the VM may
    start on either). The CD is kept in the master's registry and served as
    pillar ``pairvm:cdroms``, so ``state.apply pairvm.vms`` keeps it; a later
    change of the VM's ``cdrom`` in pillar wins again. Then, on both hosts:
    pillar refreshed, the record ``/machines/<name>`` rewritten
    (``pairvm.create``, as the state does) and ``pairvm.cdrom`` (the live
    change, the seed of ``pairvm.image`` deleted). Running it again after a
    failure finishes. ``test=True`` lists what it would do.

    CLI Example:

    .. code-block:: bash

        salt-run pairvm.cdrom vm1 iso=/srv/iso/debian.iso
        salt-run pairvm.cdrom vm1 eject=True
        salt-run pairvm.cdrom vm1 eject=True test=True
    """
    return _set_cdrom(_master().pillar(), name, iso, eject, test)


def _set_cdrom(pairvm, name, iso, eject, test):
    schema.validate_name(name)
    if (iso is not None) == (eject is True):
        raise Failed("cdrom: give iso=PATH or eject=True")
    definitions = schema.vms(pairvm)
    if name not in definitions:
        raise Failed(f"no VM {name} in pillar or the registry")
    hosts = master.pair_hosts(schema.settings(pairvm))
    if iso is not None:
        for host in hosts:
            if not os.path.isabs(iso) or not _call(host, "file.file_exists", iso):
                raise Failed(f"cdrom: {iso} is not a file on {host}: the VM may start on either host, "
                             f"so the ISO must be at the same absolute path on both")
    now = {host: _call(host, "pairvm.cdrom", name) for host in hosts}
    if test:
        return _planned(name, iso, now)
    with registry.locked(__opts__) as box:
        if name not in box["registry"].get("vms", {}):
            raise Failed(f"VM {name} has no allocation yet: run salt-run pairvm.allocate")
        box["registry"] = registry.with_cdrom(box["registry"], name, iso, definitions[name]["cdrom"])
    for host in hosts:
        _call(host, "saltutil.refresh_pillar", wait=True)
    changes = {host: _call(host, "pairvm.create", name)["changes"] for host in hosts}
    media = {"iso": iso} if iso else {"eject": True}
    for host in hosts:
        changes[host] += _call(host, "pairvm.cdrom", name, **media)["changes"]
    return {"name": name, "cdrom": iso, "changes": changes,
            "comment": f"VM {name}'s CD is {iso or 'empty'} on both hosts"}


def _planned(name, iso, now):
    changes = {}
    for host, shown in now.items():
        lines = [] if shown["recorded"] == iso else [f"write /machines/{name} (cdrom: {iso})"]
        if shown["running"] and shown["cdrom"] != iso:
            lines.append(f"virsh change-media {name} " + (f"--insert {iso}" if iso else "--eject"))
        if shown["cdrom"] == layout.seed_path(name):
            lines.append(f"rm {shown['cdrom']}")
        changes[host] = lines
    return {"name": name, "cdrom": iso, "changes": changes,
            "comment": f"would: record {iso or 'no CD'} for VM {name} in the registry (pillar pairvm:cdroms)"}


@_operation
def host_cdrom(name, iso=None, eject=False, test=False):
    """
    ``pairvm.cdrom`` for a VM of the calling host's pair: the host command's
    ``pairvm cdrom NAME ISO|eject`` (through ``publish.runner``).

    CLI Example:

    .. code-block:: bash

        salt-call publish.runner pairvm.host_cdrom arg="[vm1, /srv/iso/debian.iso]"
    """
    caller, pairvm, _ = _callers_pair("pairvm.cdrom")
    _own_vm(caller, pairvm, name)
    return _set_cdrom(pairvm, name, iso, eject, test)


def _unwrapped(result):
    if "error" in result:
        raise Failed(result["error"])
    return result


# --- the pair's configuration compared, from a host ------------------------------------------


@_operation
def host_chkconfig(name=None):
    """
    The pair verification (``pairvm.verify``) for the calling host's pair, of
    VM ``name`` only when given: the host command's ``pairvm chkconfig
    [NAME]`` (the old tool's configuration comparison across the pair). The
    ``retcode`` is 1 when there is an ERROR.

    CLI Example:

    .. code-block:: bash

        salt-call publish.runner pairvm.host_chkconfig arg="[vm1]"
    """
    caller, _, _ = _callers_pair("pairvm.verify")
    if name is not None:
        schema.validate_name(name)
    found = _unwrapped(__salt__["pairvm.verify"](minion=caller))["findings"]
    result = pair_verify.result([f for f in found if name is None or f["vm"] == name])
    if result["retcode"]:
        __context__["retcode"] = 1
    return result


# --- the ACL ---------------------------------------------------------------------------------------


@_operation
def peer_acl(write=False):
    """
    The master settings the pair hosts' command needs: ``peer_run``, which
    lets each pair host run the runner functions its host command needs
    (``host_create``, ``host_cdrom``, ``host_chkconfig``) and nothing else
    (minion ids and functions exactly: Salt matches both as regular
    expressions from the start), and ``worker_pools`` with those calls in a
    pool of their own, so that a runner waiting for the hosts never waits
    for a request queued behind itself (the master's current pools, plus
    ``pairvm_peer``).

    The hosts are those of every pair in the pillar of the accepted minions.
    Shown by default (``--out=yaml`` prints the snippet for the master
    config); ``write=True`` writes it to ``master.d/pairvm-peer.conf`` beside
    the master's configuration file (the orchestrate ``pairvm.orch.host``
    does). The master reads it when it starts: restart it after a change.

    CLI Example:

    .. code-block:: bash

        salt-run pairvm.peer_acl --out=yaml
        salt-run pairvm.peer_acl write=True
    """
    hosts = _master().pair_hosts_everywhere()
    if not hosts:
        raise Failed("no accepted minion is a host of a pair in its pillar pairvm:pair")
    wanted = peer.settings(hosts, salt.config.worker_pools.get_worker_pools_config(__opts__))
    if not write:
        return wanted
    path = os.path.join(os.path.dirname(__opts__["conf_file"]), "master.d", peer.CONFIG_NAME)
    text = peer.config_text(wanted)
    changed = machines.read_text(path) != text
    if changed:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        machines.write_atomic(path, text, 0o644)
    return {**wanted, "path": path, "changed": changed,
            "comment": f"{'wrote' if changed else 'unchanged:'} {path}"
                       + ("; restart the salt-master to apply it" if changed else "")}
