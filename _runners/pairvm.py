"""pairvm runner: operations that need both hosts of the pair at once.

The master is the only allocator: IP, MAC, DRBD port and minor and VNC
display of every VM are given here once, kept in the registry
(``pairvmlib.registry``: ``<cachedir>/pairvm/registry.json``, served to the
hosts as pillar by the ``pairvm_registry`` ext_pillar) and freed when the
VM is destroyed.
"""

import copy
import logging
import time

from pairvmlib import alloc, boundary, layout, master, registry, schema
from pairvmlib import verify as pair_verify
from pairvmlib.errors import Failed

log = logging.getLogger(__name__)

__virtualname__ = "pairvm"
__func_alias__ = {"list_": "list"}

CONNECT_TIMEOUT = 60


def __virtual__():
    return __virtualname__


def _refused(exc):
    """A refusal or failure as a clear message and a non-zero retcode."""
    __context__["retcode"] = 1
    # salt-run exits with a returned dict's "retcode".
    return {"error": str(exc), "retcode": 1}


_operation = boundary.converting(_refused)


# --- pillar and the pair ----------------------------------------------------------


def _master():
    return master.Master(__opts__)


def _pillar(minion=None):
    return _master().pillar(minion)


def _call(minion, function, *args, timeout=300, **kwargs):
    return _master().call(minion, function, *args, timeout=timeout, **kwargs)


_pair = master.pair_hosts


# --- allocate ------------------------------------------------------------------------


@_operation
def allocate(minion=None):
    """
    Validate pillar ``pairvm`` and give every VM its allocation.

    Existing allocations never change; new VMs get the lowest free IP, MAC,
    DRBD port and minor and VNC display. Nothing is saved if any VM is
    invalid, collides or would exceed the memory cap.

    CLI Example:

    .. code-block:: bash

        salt-run pairvm.allocate
    """
    pairvm = _pillar(minion)
    settings = schema.settings(pairvm)
    definitions = schema.vms(pairvm)
    with registry.locked(__opts__) as box:
        box["registry"] = alloc.allocate(settings, definitions, box["registry"])
        return {name: entry["alloc"] for name, entry in box["registry"]["vms"].items()}


# --- create ----------------------------------------------------------------------------


@_operation
def create(name, home, memory, disc, wait=True, **options):
    """
    Create VM ``name`` on both hosts of the pair, from the CLI.

    Validates everything first (nothing is touched when anything is wrong),
    allocates, registers the VM (it is then part of pillar ``pairvm:vms`` as
    if it were defined there), creates it on the peer, then on the home host
    (which starts the initial sync) and waits for DRBD to connect. Options:
    ``vcpus``, ``ip``, ``mac``, ``bridge``, ``drbd_port``, ``vnc_display``,
    ``state`` (``running`` by default, as in pillar: the VM is not started
    now, but the next orchestrate or ``pairvm autostart`` starts it; give
    ``state=stopped`` to keep it down, e.g. while installing it), ``suppress``,
    ``hypervisor_options``, ``cdrom``.

    CLI Example:

    .. code-block:: bash

        salt-run pairvm.create vm1 hostA 512 10G
        salt-run pairvm.create vm2 hostB 1024 20G vcpus=2 ip=192.0.2.50
    """
    options = {k: v for k, v in options.items() if not k.startswith("__")}
    schema.validate_name(name)
    pairvm = _pillar(home if isinstance(home, str) else None)
    settings = schema.settings(pairvm)
    definitions = schema.vms(pairvm)
    definition = {"home": home, "memory": memory, "disc": disc, **options}
    definition = schema.vm_definition(name, definition, settings)
    with registry.locked(__opts__) as box:
        if name in definitions or name in box["registry"].get("vms", {}):
            raise Failed(f"VM {name} already exists (pillar or registry)")
        updated = copy.deepcopy(alloc.allocate(settings, {**definitions, name: definition}, box["registry"]))
        updated["vms"][name]["definition"] = definition
        box["registry"] = updated
    peer = next(h for h in _pair(settings) if h != home)
    try:
        result = _apply_create(name, home, peer, wait)
    except Failed:
        _undo_create(name, settings)
        raise
    return result


def _apply_create(name, home, peer, wait):
    for host in (peer, home):
        _call(host, "saltutil.refresh_pillar", wait=True)
    changes = {peer: _call(peer, "pairvm.create", name), home: _call(home, "pairvm.create", name)}
    state = _wait_connected(home, name) if wait else _call(home, "drbd.status", name)
    return {"name": name, "home": home, "changes": changes, "drbd": state}


def _wait_connected(host, name, timeout=CONNECT_TIMEOUT):
    deadline = time.monotonic() + timeout
    while True:
        state = _call(host, "drbd.status", name)
        if state.get("connection") == "Connected":
            return state
        if time.monotonic() > deadline:
            raise Failed(
                f"DRBD resource {name} did not connect within {timeout}s on {host}: "
                f"it is {state.get('connection')}; check the replication link"
            )
        time.sleep(1)


def _undo_create(name, settings):
    """A failed create: remove the VM from both hosts and the registry."""
    for host in _pair(settings):
        try:
            _call(host, "pairvm.destroy", name, confirm=True, force=True)
        except Failed as exc:
            log.error("pairvm: could not undo create of %s on %s: %s", name, host, exc)
    with registry.locked(__opts__) as box:
        box["registry"] = alloc.release(box["registry"], name)
    for host in _pair(settings):
        try:
            _call(host, "saltutil.refresh_pillar", wait=True)
        except Failed as exc:
            log.error("pairvm: could not refresh pillar on %s: %s", host, exc)


# --- destroy ----------------------------------------------------------------------------


@_operation
def destroy(name, confirm=False, force=False):
    """
    Destroy VM ``name`` on both hosts and free its allocations.

    Its disc is lost on both hosts: ``confirm=True`` is required. A running
    VM is refused unless ``force=True``. A VM that is still defined in pillar
    files comes back at the next allocate: remove it from pillar first.

    CLI Example:

    .. code-block:: bash

        salt-run pairvm.destroy vm1 confirm=True
    """
    schema.validate_name(name)
    if confirm is not True:
        raise Failed(f"destroying VM {name} deletes its disc on both hosts: pass confirm=True")
    settings = schema.settings(_pillar())
    running = [h for h in _pair(settings) if name in _running_vms(h)]
    if running and not force:
        raise Failed(
            f"VM {name} is running on {', '.join(running)}: stop it first, or force=True"
        )
    changes = {h: _call(h, "pairvm.destroy", name, confirm=True, force=force) for h in _pair(settings)}
    with registry.locked(__opts__) as box:
        box["registry"] = alloc.release(box["registry"], name)
    for host in _pair(settings):
        _call(host, "saltutil.refresh_pillar", wait=True)
    return {"name": name, "changes": changes}


def _running_vms(host):
    return {row["name"] for row in _call(host, "pairvm.list")["vms"] if row["running"]}


# --- resize ----------------------------------------------------------------------------


@_operation
def resize(name, size):
    """
    Grow VM ``name``'s disc to ``size`` on both hosts, then resize DRBD.

    The peer's LV grows first, then the home host's, which then has DRBD use
    the new size. A shrink is refused before anything changes.

    CLI Example:

    .. code-block:: bash

        salt-run pairvm.resize vm1 20G
    """
    schema.validate_name(name)
    record = _call(_pair(schema.settings(_pillar()))[0], "pairvm.pillar_record", name)
    home = record["home"]
    return {host: _call(host, "pairvm.resize", name, size) for host in (record["peer"], home)}


# --- split brain ----------------------------------------------------------------------------


@_operation
def split_brain_victim(name, victim, snapshot_size=None, snapshot=True, test=False):
    """
    Resolve a DRBD split brain of VM ``name``: ``victim`` (a host of the
    pair) loses its changes since the split, the other host's data survives.

    On the victim, ``pairvm.split_brain_victim`` keeps a snapshot of its data
    (``snapshot_size``, default the full disc; ``snapshot=False`` explicitly
    to skip it), then reconnects it with ``--discard-my-data``; then the
    other host, if it is StandAlone, is connected too and the resync starts.
    Nothing changes when the victim refuses (no split brain, VM running there).

    CLI Example:

    .. code-block:: bash

        salt-run pairvm.split_brain_victim vm1 hostB
        salt-run pairvm.split_brain_victim vm1 hostB snapshot_size=2G
        salt-run pairvm.split_brain_victim vm1 hostB test=True
    """
    schema.validate_name(name)
    pair = _pair(schema.settings(_pillar()))
    if victim not in pair:
        raise Failed(f"victim {victim!r} is not a host of the pair ({', '.join(pair)})")
    survivor = next(host for host in pair if host != victim)
    kwargs = {"snapshot": snapshot, "test": test}
    if snapshot_size is not None:
        kwargs["snapshot_size"] = snapshot_size
    result = {victim: _call(victim, "pairvm.split_brain_victim", name, **kwargs)}
    state = _call(survivor, "drbd.status", name)
    if state.get("connection") == "StandAlone":
        if not test:
            _call(survivor, "drbd.connect", name)
        result[survivor] = {"name": name, "changes": [f"drbdadm connect {name}"],
                            "comment": f"{'would connect' if test else 'connected'} {name} on {survivor}: "
                                       f"its data is the sync source"}
    else:
        result[survivor] = {"name": name, "changes": [],
                            "comment": f"{name} on {survivor} is {state.get('connection')}: nothing to do"}
    return result


# --- list ----------------------------------------------------------------------------------


@_operation
def list_():
    """
    Every VM of the pair, one row each, merged from both hosts.

    A row shows where the VM runs and each host's DRBD state, and
    ``disagreements`` lists what the two hosts do not agree on (a VM known
    to one host only, different configuration, running on both).

    CLI Example:

    .. code-block:: bash

        salt-run pairvm.list
    """
    settings = schema.settings(_pillar())
    views = {host: _call(host, "pairvm.list") for host in _pair(settings)}
    names = sorted({row["name"] for view in views.values() for row in view["vms"]})
    return {"vms": [_merge(name, views) for name in names]}


def _merge(name, views):
    rows = {host: next((r for r in v["vms"] if r["name"] == name), None) for host, v in views.items()}
    known = {host: row for host, row in rows.items() if row}
    first = next(iter(known.values()))
    merged = {k: first[k] for k in ("name", "memory", "disc", "vnc_display", "mac", "ip")}
    merged["running_on"] = sorted(h for h, r in known.items() if r["running"])
    merged["drbd"] = {h: f"{r['drbd_connection']}/{r['drbd_disk']}" for h, r in known.items()}
    problems = [f"unknown to {h}" for h, r in rows.items() if r is None]
    for key in ("memory", "disc", "vnc_display", "mac", "ip"):
        if len({str(r[key]) for r in known.values()}) > 1:
            problems.append(f"{key} differs: " + ", ".join(f"{h}={r[key]}" for h, r in known.items()))
    if len(merged["running_on"]) > 1:
        problems.append("running on both hosts")
    merged["disagreements"] = problems
    return merged


# --- verify ----------------------------------------------------------------------------------
# The pair checked as one (like gnt-cluster verify): one pairvm.facts call per host, then
# every check on that data (pairvmlib.verify). Each finding has a stable code; docs/verify.md
# lists them.


def _gather_facts(hosts, bridges, timeout):
    """{host: facts or None}, and findings for the hosts that did not answer or failed."""
    ret = _master().client().cmd(hosts, "pairvm.facts", [], tgt_type="list", timeout=timeout,
                     kwarg={"bridges": sorted(bridges)}, full_return=True)
    facts, findings = {}, []
    for host in hosts:
        answer = (ret or {}).get(host)
        facts[host] = None
        if not isinstance(answer, dict) or "ret" not in answer:
            findings.append(pair_verify.finding("ERROR", "EHOSTDOWN", None, host,
                                     f"did not answer pairvm.facts within {timeout}s: is the host up and "
                                     f"its salt-minion running? (salt-run manage.status)"))
        elif answer.get("retcode", 0) != 0 or not isinstance(answer["ret"], dict):
            findings.append(pair_verify.finding("ERROR", "EHOSTDOWN", None, host,
                                     f"pairvm.facts failed: {answer['ret']} (are the modules synced? "
                                     f"salt {host} saltutil.sync_all)"))
        else:
            facts[host] = answer["ret"]
    return facts, findings


@_operation
def verify(timeout=60):
    """
    Check the pair as a whole and report what is wrong (like ``gnt-cluster verify``).

    Asks both hosts for ``pairvm.facts`` (one call each, in parallel) and
    compares them with pillar and the registry (read only). Changes nothing.
    Returns ``{"ok", "summary", "lines", "findings", "retcode"}``: ``lines``
    reads ``SEVERITY CODE vm@host: message``; each finding is ``{"severity":
    "ERROR"|"WARNING", "code", "vm", "host", "message"}``. A healthy pair has
    no findings. The exit code is 1 when there is an ERROR. Use
    ``--out=json`` for the findings as data.

    Codes (stable; docs/verify.md explains each and what to do):

    - ``EHOSTDOWN``: a host did not answer (or pairvm.facts failed on it)
    - ``EQUERYFAILED``: a query on a host, or reading the registry, failed
    - ``EVMMISSING``: a VM of pillar/registry is missing on a host (/machines/<vm> or its LV)
    - ``EVMUNKNOWN`` (WARNING): on a host but not in pillar/registry
    - ``EMACHINESDIFF``: /machines/<vm> differs between the hosts
    - ``EDRBDSPLITBRAIN``: DRBD resource StandAlone with its disc: split brain
    - ``EDRBDDISCONNECTED``: DRBD resource down or not Connected
    - ``EDRBDNOTUPTODATE``: a DRBD disc not UpToDate
    - ``EVMRUNNINGTWICE``: a VM running on both hosts
    - ``EDRBDDUALPRIMARY``: a resource allows two primaries outside a live migration
    - ``EVMAWAY``: a VM runs away from its home (WARNING)
    - ``EVMNOTRUNNING``: should run but runs on neither host (WARNING if suppressed)
    - ``EVNCNOTLOCAL``: VNC listening elsewhere than 127.0.0.1
    - ``EMEMCAP``: the pair's VM memory over ``pairvm:memory_cap``
    - ``EALLOCCOLLISION``: the registry gives one value to two VMs
    - ``ETOOLMISSING``: a required tool is missing on a host
    - ``EVGMISSING``: a volume group is missing on a host
    - ``EBRIDGEMISSING``: a bridge the VMs use is missing on a host

    CLI Example:

    .. code-block:: bash

        salt-run pairvm.verify
        salt-run pairvm.verify --out=json
    """
    pairvm = _pillar()
    settings = schema.settings(pairvm)
    definitions = schema.vms(pairvm)
    findings = []
    try:
        saved = registry.read(__opts__)
    except (OSError, ValueError) as exc:
        saved = None
        where = layout.registry_path(__opts__)
        findings.append(pair_verify.finding("ERROR", "EQUERYFAILED", None, None,
                                            f"cannot read the registry {where}: {exc}"))
    bridges = {settings["bridge"]} | {d["bridge"] for d in definitions.values() if d.get("bridge")}
    facts, down = _gather_facts(_pair(settings), bridges, timeout)
    findings += down + pair_verify.analyse(settings, definitions, saved, facts, bridges)
    result = pair_verify.result(findings)
    if result["retcode"]:
        __context__["retcode"] = 1
    return result
