"""pairvm runner: operations that need both hosts of a pair at once.

A master may run several pairs (docs/data-model.md, "Several pairs"). The
master is the only allocator: IP, MAC, DRBD port and minor and VNC display
of every VM are given here once, kept in its pair's registry
(``pairvmlib.registry``: ``<cachedir>/pairvm/pairs/<pair>/registry.json``,
served to that pair's hosts only, as pillar, by the ``pairvm_registry``
ext_pillar) and freed when the VM is destroyed. MACs and VM names are
unique across the master. A function finds the pair from the VM (its
registry), from a host (its pillar), or takes ``pair=``; it first checks
that the hosts it needs answer (``pairvmlib.master``: a short ping), and
refuses, naming the host, before anything changes.
"""

import logging
import time

from pairvmlib import alloc, boundary, master, registry, schema
from pairvmlib import verify as pair_verify
from pairvmlib.errors import Failed, PairvmError

log = logging.getLogger(__name__)

__virtualname__ = "pairvm"
__func_alias__ = {"list_": "list"}

CONNECT_TIMEOUT = 60


def __virtual__():
    return __virtualname__


_operation = boundary.converting(lambda exc: master.refused(__context__, exc))


# --- the master, pairs and hosts -----------------------------------------------------------


def _master():
    return master.Master(__opts__)


def _pillar(minion):
    return _master().pillar(minion)


def _call(minion, function, *args, timeout=300, **kwargs):
    return _master().call(minion, function, *args, timeout=timeout, **kwargs)


def _pair_of(name, pair=None):
    """(pair, hosts) of VM ``name``: its registry's pair, or ``pair``; the hosts must answer."""
    found = _master().pair(pair=pair, vm=None if pair else name)
    _master().require(found[1])
    return found


@_operation
def pairs():
    """
    The pairs of this master: each one's two hosts, its number of VMs, and
    whether it has a registry yet (``registered``; a pair only pillar names
    gets one at its first ``pairvm.allocate``).

    CLI Example:

    .. code-block:: bash

        salt-run pairvm.pairs
    """
    return _master().pairs(discover=True)


# --- allocate ------------------------------------------------------------------------


def _allocate_pair(settings, definitions, new=None):
    """Allocate one pair's VMs under the registry lock, with ``new`` ((name, definition) of a
    VM created from the CLI, refused if the name exists); the pair's secret is made once when
    pillar gives none. Returns the pair's registry as saved."""
    with registry.locked(__opts__, settings["pair_name"]) as box:
        if new is not None:
            name, definition = new
            if name in definitions or name in box["registry"].get("vms", {}):
                raise Failed(f"VM {name} already exists (pillar or registry)")
            definitions = {**definitions, name: definition}
        box["registry"] = alloc.allocate_pair(settings, definitions, box["registry"], box["others"])
        if new is not None:
            box["registry"]["vms"][name]["definition"] = definition
        if not (settings.get("drbd_options") or {}).get("shared_secret"):
            registry.ensure_secret(__opts__, box["pair"])
        return box["registry"]


@_operation
def allocate(minion=None, pair=None):
    """
    Validate pillar ``pairvm`` and give every VM its allocation, pair by pair.

    For the pair of host ``minion``, of pair ``pair``, or of every pair
    (``pairvm.pairs``). Existing allocations never change; new VMs get the
    lowest free IP, MAC (unique across the master), DRBD port and minor and
    VNC display of their pair. Nothing is saved for a pair if any of its VMs
    is invalid, collides or would exceed the memory cap, or if it clashes
    with another pair (a host or a VM name in two pairs, overlapping pools
    on one public network). Generates the pair's DRBD secret once, when
    pillar gives none. Returns ``{pair: {vm: allocation}}``.

    CLI Example:

    .. code-block:: bash

        salt-run pairvm.allocate
        salt-run pairvm.allocate pair=two
    """
    if minion is not None:
        hosts = [minion]
    else:
        known = _master().pairs(discover=True)
        if pair is not None and pair not in known:
            raise Failed(f"no pair {pair!r}: salt-run pairvm.pairs lists them")
        hosts = [known[name]["hosts"][0] for name in sorted(known) if pair in (None, name)]
    result = {}
    for host in hosts:
        pairvm = _pillar(host)
        settings = schema.settings(pairvm)
        saved = _allocate_pair(settings, schema.vms(pairvm))
        result[settings["pair_name"]] = {name: entry["alloc"] for name, entry in saved["vms"].items()}
    return result


# --- create ----------------------------------------------------------------------------


@_operation
def create(name, home, memory, disc, wait=True, pair=None, **options):
    """
    Create VM ``name`` on both hosts of ``home``'s pair, from the CLI.

    Validates everything first (nothing is touched when anything is wrong,
    or when a host of the pair does not answer), allocates, registers the VM
    in its pair's registry (it is then part of pillar ``pairvm:vms`` of the
    pair's hosts as if it were defined there), creates it on the peer, then
    on the home host (which starts the initial sync) and waits for DRBD to
    connect; the result names the VM's ``pair``, ``ip``, ``mac`` and
    ``vnc_display``. ``pair``: refuse unless ``home`` is a host of that pair.
    Options: ``vcpus``, ``ip``, ``mac``, ``bridge``, ``drbd_port``,
    ``vnc_display``, ``state`` (``running`` by default, as in pillar: the VM
    is not started now, but the next orchestrate or ``pairvm autostart``
    starts it; give ``state=stopped`` to keep it down, e.g. while installing
    it), ``suppress``, ``hypervisor_options``, ``cdrom``.

    CLI Example:

    .. code-block:: bash

        salt-run pairvm.create vm1 hostA 512 10G
        salt-run pairvm.create vm2 hostB 1024 20G vcpus=2 ip=192.0.2.50
        salt-run pairvm.create web3 hostC 512 10G pair=two
    """
    options = {k: v for k, v in options.items() if not k.startswith("__")}
    schema.validate_name(name)
    if not isinstance(home, str):
        raise Failed(f"home: {home!r} is not a minion id")
    pairvm = _pillar(home)
    settings = schema.settings(pairvm)
    if pair is not None and pair != settings["pair_name"]:
        raise Failed(f"home {home} is a host of pair {settings['pair_name']!r}, not {pair!r}")
    definitions = schema.vms(pairvm)
    definition = {"home": home, "memory": memory, "disc": disc, **options}
    definition = schema.vm_definition(name, definition, settings)
    hosts = master.pair_hosts(settings)
    _master().require(hosts)
    saved = _allocate_pair(settings, definitions, new=(name, definition))
    peer = next(h for h in hosts if h != home)
    try:
        result = _apply_create(name, home, peer, wait)
    except Failed:
        _undo_create(name, settings["pair_name"], hosts)
        raise
    given = {key: saved["vms"][name]["alloc"][key] for key in ("ip", "mac", "vnc_display")}
    return {**result, "pair": settings["pair_name"], **given}


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


def _undo_create(name, pair, hosts):
    """A failed create: remove the VM from both hosts and the registry."""
    for host in hosts:
        try:
            _call(host, "pairvm.destroy", name, confirm=True, force=True)
        except Failed as exc:
            log.error("pairvm: could not undo create of %s on %s: %s", name, host, exc)
    with registry.locked(__opts__, pair) as box:
        box["registry"] = alloc.release(box["registry"], name)
    for host in hosts:
        try:
            _call(host, "saltutil.refresh_pillar", wait=True)
        except Failed as exc:
            log.error("pairvm: could not refresh pillar on %s: %s", host, exc)


# --- destroy ----------------------------------------------------------------------------


@_operation
def destroy(name, confirm=False, force=False, pair=None):
    """
    Destroy VM ``name`` on both hosts of its pair and free its allocations.

    Its disc is lost on both hosts: ``confirm=True`` is required. A running
    VM is refused unless ``force=True``. Refused, before anything changes,
    when a host of the pair does not answer. The pair is the one whose
    registry holds the VM; ``pair=`` names it (also to clean up what a
    pair's hosts hold of a VM no registry knows). A VM that is still
    defined in pillar files comes back at the next allocate: remove it from
    pillar first.

    CLI Example:

    .. code-block:: bash

        salt-run pairvm.destroy vm1 confirm=True
        salt-run pairvm.destroy vm1 confirm=True pair=two
    """
    schema.validate_name(name)
    if confirm is not True:
        raise Failed(f"destroying VM {name} deletes its disc on both hosts: pass confirm=True")
    pair, hosts = _pair_of(name, pair)
    running = [h for h in hosts if name in _running_vms(h)]
    if running and not force:
        raise Failed(
            f"VM {name} is running on {', '.join(running)}: stop it first, or force=True"
        )
    changes = {h: _call(h, "pairvm.destroy", name, confirm=True, force=force) for h in hosts}
    with registry.locked(__opts__, pair) as box:
        box["registry"] = alloc.release(box["registry"], name)
    for host in hosts:
        _call(host, "saltutil.refresh_pillar", wait=True)
    return {"name": name, "pair": pair, "changes": changes}


def _running_vms(host):
    return {row["name"] for row in _call(host, "pairvm.list")["vms"] if row["running"]}


# --- resize ----------------------------------------------------------------------------


@_operation
def resize(name, size, pair=None):
    """
    Grow VM ``name``'s disc to ``size`` on both hosts, then resize DRBD, and record it.

    The peer's LV grows first, then the home host's, which then has DRBD use
    the new size; each host's ``/machines/<name>`` then says the new size. A
    shrink or a bad size is refused before anything changes, and so is any
    resize while a host of the VM's pair (found from its registry, or
    ``pair=``) does not answer. The size is then kept in the pair's registry,
    so that the VM states (``pairvm.vms``, which write ``/machines/<name>``
    from pillar) keep it: in the definition of a VM created with
    ``salt-run pairvm.create``; for a VM of the pillar files, beside its
    allocation (served as pillar ``pairvm:resized``; its record takes the
    larger of that and the pillar's ``disc``). Set the new ``disc`` in the
    pillar files too: until then ``salt-run pairvm.verify`` warns
    (``EDISCGROWN``). Running it again after a failure finishes the job.

    CLI Example:

    .. code-block:: bash

        salt-run pairvm.resize vm1 20G
    """
    schema.validate_name(name)
    new_mib = schema.parse_size_mib(size)
    pair, hosts = _pair_of(name, pair)
    pairvm = _pillar(hosts[0])
    record = _call(hosts[0], "pairvm.pillar_record", name)
    resized = {host: _call(host, "pairvm.resize", name, size) for host in (record["peer"], record["home"])}
    pillar_mib = schema.vms(pairvm).get(name, {}).get("disc_mib", 0)
    with registry.locked(__opts__, pair) as box:
        box["registry"] = registry.record_disc(box["registry"], name, new_mib, pillar_mib)
    for host in hosts:
        _call(host, "saltutil.refresh_pillar", wait=True)
    return {"name": name, "disc_mib": new_mib, "hosts": resized,
            "comment": f"VM {name}'s disc is {new_mib} MiB on both hosts, recorded in the registry"}


# --- split brain ----------------------------------------------------------------------------


@_operation
def split_brain_victim(name, victim, snapshot_size=None, snapshot=True, test=False, pair=None):
    """
    Resolve a DRBD split brain of VM ``name``: ``victim`` (a host of the
    pair) loses its changes since the split, the other host's data survives.

    On the victim, ``pairvm.split_brain_victim`` keeps a snapshot of its data
    (``snapshot_size``, default the full disc; ``snapshot=False`` explicitly
    to skip it), then reconnects it with ``--discard-my-data``; then the
    other host, if it is StandAlone, is connected too and the resync starts.
    Nothing changes when the victim refuses (no split brain, VM running there)
    or a host of the VM's pair (its registry's, or ``pair=``) does not answer.

    CLI Example:

    .. code-block:: bash

        salt-run pairvm.split_brain_victim vm1 hostB
        salt-run pairvm.split_brain_victim vm1 hostB snapshot_size=2G
        salt-run pairvm.split_brain_victim vm1 hostB test=True
    """
    schema.validate_name(name)
    _, hosts = _pair_of(name, pair)
    if victim not in hosts:
        raise Failed(f"victim {victim!r} is not a host of VM {name}'s pair ({', '.join(hosts)})")
    survivor = next(host for host in hosts if host != victim)
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


def _registered(pair=None, errors=None):
    """{pair: hosts} of the registered pairs, or of ``pair`` alone (``errors``: see
    ``Master.pairs``)."""
    known = {name: info["hosts"] for name, info in _master().pairs(errors=errors).items() if info["hosts"]}
    if pair is not None and pair not in known and not (errors or {}).get(pair):
        raise Failed(f"no registered pair {pair!r} (salt-run pairvm.pairs; salt-run pairvm.allocate "
                     f"registers a pair)")
    return {name: hosts for name, hosts in known.items() if pair in (None, name)}


def _ask(hosts, function, timeout, **kwargs):
    """One ping of ``hosts``, then one publish of ``function`` to those that answered:
    ({host: return value}, {host: why there is none})."""
    down = _master().silent(hosts)
    answers = _master().call_all([h for h in hosts if h not in down], function, timeout=timeout, **kwargs)
    values, missing = {}, {}
    for host in sorted(hosts):
        answer = answers.get(host)
        if host in down or not isinstance(answer, dict) or "ret" not in answer:
            waited = master.PING_TIMEOUT + master.FIND_JOB_TIMEOUT if host in down else timeout
            missing[host] = (f"did not answer within {waited} s: is the host up and its salt-minion "
                             f"running? (salt-run manage.status)")
        elif answer.get("retcode", 0) != 0:
            missing[host] = (f"{function} failed: {answer['ret']} (are the modules synced? "
                             f"salt {host} saltutil.sync_all)")
        else:
            values[host] = answer["ret"]
    return values, missing


@_operation
def list_(pair=None, timeout=60):
    """
    Every VM of every pair (or of ``pair``), one row each, merged from its pair's two hosts.

    A row shows its ``pair``, where the VM runs and each host's DRBD state,
    and ``disagreements`` lists what the two hosts do not agree on (a VM
    known to one host only, different configuration, running on both). All
    hosts are asked at once (one ping, one ``pairvm.list`` publish); a host
    that does not answer is named under ``unreachable`` (and the exit code is
    1), the rows show what its peer says.

    CLI Example:

    .. code-block:: bash

        salt-run pairvm.list
        salt-run pairvm.list pair=two
    """
    known = _registered(pair)
    views, missing = _ask([h for hosts in known.values() for h in hosts], "pairvm.list", timeout)
    rows = []
    for name in sorted(known):
        rows += merge_views(name, {h: views.get(h) for h in known[name]})
    if missing:
        __context__["retcode"] = 1
    return {"vms": rows, "unreachable": missing}


def merge_views(pair, views):
    """The rows of ``pair``'s VMs from its hosts' ``pairvm.list`` ({host: view, or None when it
    did not answer}), one per VM, sorted by name."""
    indexed = {host: {row["name"]: row for row in view["vms"]} for host, view in views.items() if view}
    names = sorted({name for rows in indexed.values() for name in rows})
    return [_merge(pair, name, indexed) for name in names]


def _merge(pair, name, indexed):
    rows = {host: rows.get(name) for host, rows in indexed.items()}
    known = {host: row for host, row in rows.items() if row}
    first = next(iter(known.values()))
    merged = {"pair": pair, **{k: first[k] for k in ("name", "memory", "disc", "vnc_display", "mac", "ip")}}
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
# Every pair checked as one (like gnt-cluster verify): one ping and one pairvm.facts publish
# for all hosts, then every check on that data (pairvmlib.verify). Each finding has a stable
# code; docs/verify.md lists them.


def _pair_context(name, hosts):
    """(settings, definitions, registry) of one pair, or the finding saying why not."""
    try:
        pairvm = _pillar(hosts[0])
        return (schema.settings(pairvm), schema.vms(pairvm), registry.read(__opts__, name)), None
    except PairvmError as exc:
        return None, pair_verify.finding("ERROR", "EQUERYFAILED", None, None, str(exc), pair=name)


def _readable_registries():
    """{pair: registry} of every pair whose registry can be read (verify names the others)."""
    found = {}
    for name in registry.pair_names(__opts__):
        try:
            found[name] = registry.read(__opts__, name)
        except Failed:
            continue
    return found


@_operation
def verify(timeout=60, pair=None, minion=None, name=None):
    """
    Check every pair (or ``pair``, or the pair of host ``minion``) as a whole
    and report what is wrong (like ``gnt-cluster verify``); with ``name``,
    only the findings about VM ``name``.

    Asks all hosts for ``pairvm.facts`` at once (one ping, one publish) and
    compares each pair's with its pillar and registry, and the registries
    with each other (read only). Changes nothing. Returns ``{"ok",
    "summary", "pairs", "lines", "findings", "retcode"}``: ``lines`` reads
    ``SEVERITY CODE vm@host: message``; each finding is ``{"severity":
    "ERROR"|"WARNING", "code", "vm", "host", "message", "pair"}``. A healthy
    master has no findings. The exit code is 1 when there is an ERROR. Use
    ``--out=json`` for the findings as data.

    Codes (stable; docs/verify.md explains each and what to do):

    - ``EHOSTDOWN``: a host did not answer (or pairvm.facts failed on it)
    - ``EQUERYFAILED``: a query on a host, or reading a pair's pillar or registry, failed
    - ``EVMMISSING``: a VM of pillar/registry is missing on a host (/machines/<vm> or its LV)
    - ``EVMUNKNOWN`` (WARNING): on a host but not in pillar/registry
    - ``EMACHINESDIFF``: /machines/<vm> differs between the hosts
    - ``EDRBDSPLITBRAIN``: DRBD resource StandAlone with its disc: split brain
    - ``EDRBDDISCONNECTED``: DRBD resource down or not Connected
    - ``EDRBDNOTUPTODATE``: a DRBD disc not UpToDate
    - ``EDRBDNOAUTH``: a DRBD resource connects without peer authentication
    - ``EVMRUNNINGTWICE``: a VM running on both hosts
    - ``EDRBDDUALPRIMARY``: a resource allows two primaries outside a live migration
    - ``EVMAWAY``: a VM runs away from its home (WARNING)
    - ``EVMNOTRUNNING``: should run but runs on neither host (WARNING if suppressed)
    - ``EVNCNOTLOCAL``: VNC listening elsewhere than 127.0.0.1
    - ``EDISCGROWN``: a VM's LVs bigger than its pillar disc (WARNING while the registry keeps the size)
    - ``EHOMEMOVED`` (WARNING): ``pairvm.swap`` moved a VM's home; its pillar entry gives the old one
    - ``ESWAPUNFINISHED`` (WARNING): a ``pairvm.swap`` of a VM began and did not finish
    - ``EMEMCAP``: the pair's VM memory over ``pairvm:memory_cap``
    - ``EALLOCCOLLISION``: a value given twice (in a registry, or across pairs)
    - ``ETOOLMISSING``: a required tool is missing on a host
    - ``EVGMISSING``: a volume group is missing on a host
    - ``EBRIDGEMISSING``: a bridge the VMs use is missing on a host

    CLI Example:

    .. code-block:: bash

        salt-run pairvm.verify
        salt-run pairvm.verify pair=two --out=json
        salt-run pairvm.verify minion=hostA name=vm1
    """
    vm = name
    if minion is not None:
        pair = schema.settings(_pillar(minion))["pair_name"]
    unreadable = {}
    known = _registered(pair, errors=unreadable)
    findings = [pair_verify.finding("ERROR", "EQUERYFAILED", None, None, why, pair=name)
                for name, why in sorted(unreadable.items()) if pair in (None, name)]
    contexts = {}
    for name in sorted(known):
        contexts[name], problem = _pair_context(name, known[name])
        findings += [problem] if problem else []
    bridges = {b for ctx in contexts.values() if ctx for b in pair_verify.bridges(ctx[0], ctx[1])}
    facts, missing = _ask([h for hosts in known.values() for h in hosts], "pairvm.facts", timeout,
                          bridges=sorted(bridges))
    for name, hosts in known.items():
        findings += [pair_verify.finding("ERROR", "EHOSTDOWN", None, host, missing[host], pair=name)
                     for host in hosts if host in missing]
        if contexts[name]:
            settings, definitions, saved = contexts[name]
            found = pair_verify.analyse(settings, definitions, saved, {h: facts.get(h) for h in hosts},
                                        pair_verify.bridges(settings, definitions))
            findings += [dict(f, pair=name) for f in found]
    findings += pair_verify.fleet_checks(_readable_registries(), pair)
    result = pair_verify.result([f for f in findings if vm is None or f["vm"] == vm], pairs=sorted(known))
    if result["retcode"]:
        __context__["retcode"] = 1
    return result
