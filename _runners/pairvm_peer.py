"""pairvm runner (from the hosts): what the host command runs on the master, and a VM's CD.

A pair host reaches the master through Salt's peer runner interface
(``salt-call publish.runner FUN arg="[...]"``, what the host command runs).
The master runs a runner function for a minion only when its ``peer_run``
setting allows that minion and that function (``peer_acl`` writes it, for
the ``host_*`` functions and the pair hosts only); inside,
``__opts__["id"]`` is the calling minion's id, which Salt's request channel
checks against the minion's signed token. Each ``host_*`` function acts only
on the caller's own pair: it checks the request, then starts the operator's
own runner (``pairvm.create``, ``pairvm.cdrom``, ``pairvm.verify``) with
``salt-run`` as a job of its own and answers at once; ``host_job`` gives the
caller the job's result (``pairvmlib.peerjobs`` says why a peer runner must
not wait for the hosts itself).

``cdrom`` records a VM's CD in the registry (served as pillar
``pairvm:cdroms``, so the next ``state.apply pairvm.vms`` keeps it) and
writes it into the VM's record on both hosts.
"""

import os

from pairvmlib import boundary, layout, machines, master, peer, peerjobs, registry, schema
from pairvmlib.errors import Failed

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


def _callers_vm(name, on_master):
    """(caller, its pair's settings) of a host_* function about VM ``name``, which must be a
    VM of the caller's pair."""
    caller, pairvm, settings = _callers_pair(on_master)
    schema.validate_name(name)
    if name not in schema.vms(pairvm):
        raise Failed(f"VM {name} is not a VM of {caller}'s pair")
    return caller, settings


def _job(caller, function, **kwargs):
    """Start ``salt-run FUNCTION key=value ...`` as ``caller``'s job; the answer to the host."""
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    token = peerjobs.start(__opts__, caller, peerjobs.salt_run_argv(__opts__, function, kwargs))
    return {"job": token, "comment": f"started {function} on the master as job {token}"}


# --- create from a host -----------------------------------------------------------------------


@_operation
def host_create(name, where, memory, disc, vcpus=None, ip=None):
    """
    Start ``pairvm.create`` of VM ``name`` for a pair host: ``where`` ``here``
    makes the calling host the VM's home, ``there`` its peer.

    For the host command ``pairvm create NAME here|there MEMORY DISC [--ip IP]
    [--vcpus N]`` (through ``publish.runner``; the peer_run ACL of
    ``pairvm.peer_acl``). ``memory`` in MiB, ``disc`` a size (``10G``).
    Returns ``{"job": TOKEN}``: ``host_job`` gives the create's result.

    CLI Example:

    .. code-block:: bash

        salt-call publish.runner pairvm.host_create arg="[vm1, here, 1024, 10G]"
    """
    caller, _, settings = _callers_pair("pairvm.create")
    schema.validate_name(name)
    if where not in ("here", "there"):
        raise Failed(f"where must be here or there, got {where!r}")
    home = caller if where == "here" else next(h for h in master.pair_hosts(settings) if h != caller)
    return _job(caller, "pairvm.create", name=name, home=home, memory=memory, disc=disc, vcpus=vcpus, ip=ip)


# --- the CD of a VM, recorded on both hosts ------------------------------------------------------


@_operation
def cdrom(name, iso=None, eject=False, minion=None, test=False, pair=None):
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
    failure finishes. The VM's pair is found from the registries, or is
    ``pair``, or that of host ``minion``; its hosts must answer a ping.
    ``test=True`` lists what it would do.

    CLI Example:

    .. code-block:: bash

        salt-run pairvm.cdrom vm1 iso=/srv/iso/debian.iso
        salt-run pairvm.cdrom vm1 eject=True
        salt-run pairvm.cdrom vm1 eject=True test=True
    """
    schema.validate_name(name)
    if (iso is not None) == (eject is True):
        raise Failed("cdrom: give iso=PATH or eject=True")
    hub = _master()
    if minion is not None:
        pairvm = hub.pillar(minion)
        pair, hosts = schema.settings(pairvm)["pair_name"], master.pair_hosts(schema.settings(pairvm))
    else:
        pair, hosts = hub.pair(pair=pair, vm=None if pair else name)
        pairvm = hub.pillar(hosts[0])
    hub.require(hosts)
    definitions = schema.vms(pairvm)
    if name not in definitions:
        raise Failed(f"no VM {name} in pillar or the registry of pair {pair!r}")
    if iso is not None:
        for host in hosts:
            if not os.path.isabs(iso) or not _call(host, "file.file_exists", iso):
                raise Failed(f"cdrom: {iso} is not a file on {host}: the VM may start on either host, "
                             f"so the ISO must be at the same absolute path on both")
    now = {host: _call(host, "pairvm.cdrom", name) for host in hosts}
    if test:
        return _planned(name, iso, now)
    with registry.locked(__opts__, pair) as box:
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
    Start ``pairvm.cdrom`` for a VM of the calling host's pair: the host
    command's ``pairvm cdrom NAME ISO|eject`` (through ``publish.runner``).
    Returns ``{"job": TOKEN}``: ``host_job`` gives the result.

    CLI Example:

    .. code-block:: bash

        salt-call publish.runner pairvm.host_cdrom arg="[vm1, /srv/iso/debian.iso]"
    """
    caller, _ = _callers_vm(name, "pairvm.cdrom")
    return _job(caller, "pairvm.cdrom", name=name, iso=iso, eject=eject or None, minion=caller,
                test=test or None)


# --- a VM's home moved, from a host --------------------------------------------------------------


@_operation
def host_swap(name):
    """
    Start ``pairvm.swap`` (the peer becomes VM ``name``'s home) for a VM of
    the calling host's pair: the host command's ``pairvm swap NAME``
    (through ``publish.runner``). Returns ``{"job": TOKEN}``: ``host_job``
    gives the result.

    CLI Example:

    .. code-block:: bash

        salt-call publish.runner pairvm.host_swap arg="[vm1]"
    """
    caller, settings = _callers_vm(name, "pairvm.swap")
    return _job(caller, "pairvm.swap", name=name, pair=settings["pair_name"])


# --- the pair's configuration compared, from a host ------------------------------------------


@_operation
def host_chkconfig(name=None):
    """
    Start the pair verification (``pairvm.verify``) of the calling host's
    pair, of VM ``name`` only when given: the host command's ``pairvm
    chkconfig [NAME]`` (the old tool's configuration comparison across the
    pair). Returns ``{"job": TOKEN}``: ``host_job`` gives the findings.

    CLI Example:

    .. code-block:: bash

        salt-call publish.runner pairvm.host_chkconfig arg="[vm1]"
    """
    caller, _, _ = _callers_pair("pairvm.verify")
    if name is not None:
        schema.validate_name(name)
    return _job(caller, "pairvm.verify", minion=caller, name=name)


@_operation
def host_job(token):
    """
    The result of the calling host's job ``token`` (started by a ``host_*``
    function): ``{"done": False}`` while it runs, else ``{"done": True,
    "result": ...}`` (the job is gone then). Only the host that started a job
    reads it.

    CLI Example:

    .. code-block:: bash

        salt-call publish.runner pairvm.host_job arg="[0123456789abcdef0123456789abcdef]"
    """
    return peerjobs.result(__opts__, __opts__["id"], token)


# --- the ACL ---------------------------------------------------------------------------------------


@_operation
def peer_acl(write=False):
    """
    The master's ``peer_run`` setting that lets each pair host run the runner
    functions its host command needs (``host_create``, ``host_cdrom``,
    ``host_chkconfig``, ``host_job``), and nothing else; minion ids and
    functions exactly (Salt matches both as regular expressions from the
    start).

    The hosts are those of every pair (``salt-run pairvm.pairs``: the
    registries, and the pairs the pillar of the accepted minions defines).
    Shown by default (``--out=yaml`` prints the snippet for the master
    config); ``write=True`` writes it to ``master.d/pairvm-peer.conf`` beside
    the master's configuration file (the orchestrate ``pairvm.orch.host``
    does). The master reads it when it starts: restart it after a change.

    CLI Example:

    .. code-block:: bash

        salt-run pairvm.peer_acl --out=yaml
        salt-run pairvm.peer_acl write=True
    """
    hosts = [host for pair in _master().pairs(discover=True).values() for host in pair["hosts"]]
    if not hosts:
        raise Failed("no pair: no registry records one and no accepted minion is a host of a pair "
                     "in its pillar pairvm:pair")
    if not write:
        return {"peer_run": peer.acl(hosts)}
    path = os.path.join(os.path.dirname(__opts__["conf_file"]), "master.d", peer.CONFIG_NAME)
    text = peer.config_text(hosts)
    changed = machines.read_text(path) != text
    if changed:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        machines.write_atomic(path, text, 0o644)
    return {"path": path, "changed": changed, "peer_run": peer.acl(hosts),
            "comment": f"{'wrote' if changed else 'unchanged:'} {path}"
                       + ("; restart the salt-master to apply it" if changed else "")}
