"""pairvm runner: operations that need both hosts of the pair at once.

The master is the only allocator: IP, MAC, DRBD port and minor and VNC
display of every VM are given here once, kept in the registry
(``<cachedir>/pairvm/registry.json``, served to the hosts as pillar by the
``pairvm_registry`` ext_pillar) and freed when the VM is destroyed.
"""

import contextlib
import copy
import fcntl
import functools
import logging
import os
import time

import salt.client
import salt.key
import salt.pillar
import salt.utils.files
import salt.utils.json
from salt.exceptions import CommandExecutionError, SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "pairvm"
__func_alias__ = {"list_": "list"}

CONNECT_TIMEOUT = 60


def __virtual__():
    return __virtualname__


def _operation(func):
    """Report a refusal or failure as a clear message and a non-zero retcode."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except CommandExecutionError as exc:
            __context__["retcode"] = 1
            # salt-run exits with a returned dict's "retcode".
            return {"error": str(exc), "retcode": 1}

    return wrapper


# --- the registry ----------------------------------------------------------------


def _registry_path():
    return os.path.join(__opts__["cachedir"], "pairvm", "registry.json")


@contextlib.contextmanager
def _registry():
    """The registry, locked for the whole block; saved (atomically) when changed."""
    path = _registry_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with salt.utils.files.fopen(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        registry = {"vms": {}}
        if os.path.exists(path):
            with salt.utils.files.fopen(path, "r") as fh:
                registry = salt.utils.json.load(fh)
        box = {"registry": registry}
        yield box
        if box["registry"] != registry:
            tmp = path + ".tmp"
            with salt.utils.files.fopen(tmp, "w") as fh:
                salt.utils.json.dump(box["registry"], fh, indent=2, sort_keys=True)
            os.rename(tmp, path)


def _util(func, *args):
    try:
        return __utils__[func](*args)
    except SaltInvocationError as exc:
        raise CommandExecutionError(str(exc)) from exc


# --- pillar and the pair ----------------------------------------------------------


def _pillar(minion=None):
    """Pillar ``pairvm`` as the master compiles it for ``minion`` (default: any pair host)."""
    candidates = [minion] if minion else salt.key.get_key(__opts__).list_status("accepted")["minions"]
    for mid in candidates:
        pillar = salt.pillar.get_pillar(__opts__, {"id": mid}, mid, saltenv="base").compile_pillar()
        if pillar.get("pairvm", {}).get("pair"):
            return pillar["pairvm"]
    raise CommandExecutionError(
        f"no pillar pairvm:pair for {minion or 'any accepted minion'}: define the pair in pillar"
    )


def _pair(settings):
    return sorted(settings["pair"])


def _call(minion, function, *args, timeout=300, **kwargs):
    """Run an execution function on one minion; raise with its message if it failed."""
    client = salt.client.get_local_client(__opts__["conf_file"])
    ret = client.cmd(minion, function, list(args), timeout=timeout, kwarg=kwargs, full_return=True)
    if minion not in ret:
        raise CommandExecutionError(f"{minion} did not answer {function} within {timeout}s")
    result = ret[minion]
    if result.get("retcode", 0) != 0:
        raise CommandExecutionError(f"{minion}: {function} failed: {result.get('ret')}")
    return result["ret"]


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
    settings = _util("pairvm_schema.settings", pairvm)
    definitions = _util("pairvm_schema.vms", pairvm)
    with _registry() as box:
        box["registry"] = _util("pairvm_alloc.allocate", settings, definitions, box["registry"])
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
    _util("pairvm_schema.validate_name", name)
    pairvm = _pillar(home if isinstance(home, str) else None)
    settings = _util("pairvm_schema.settings", pairvm)
    definitions = _util("pairvm_schema.vms", pairvm)
    definition = {"home": home, "memory": memory, "disc": disc, **options}
    definition = _util("pairvm_schema.vm_definition", name, definition, settings)
    with _registry() as box:
        if name in definitions or name in box["registry"].get("vms", {}):
            raise CommandExecutionError(f"VM {name} already exists (pillar or registry)")
        registry = _util("pairvm_alloc.allocate", settings, {**definitions, name: definition},
                         box["registry"])
        registry = copy.deepcopy(registry)
        registry["vms"][name]["definition"] = definition
        box["registry"] = registry
    peer = next(h for h in _pair(settings) if h != home)
    try:
        result = _apply_create(name, home, peer, wait)
    except CommandExecutionError:
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
            raise CommandExecutionError(
                f"DRBD resource {name} did not connect within {timeout}s on {host}: "
                f"it is {state.get('connection')}; check the replication link"
            )
        time.sleep(1)


def _undo_create(name, settings):
    """A failed create: remove the VM from both hosts and the registry."""
    for host in _pair(settings):
        try:
            _call(host, "pairvm.destroy", name, confirm=True, force=True)
        except CommandExecutionError as exc:
            log.error("pairvm: could not undo create of %s on %s: %s", name, host, exc)
    with _registry() as box:
        box["registry"] = __utils__["pairvm_alloc.release"](box["registry"], name)
    for host in _pair(settings):
        try:
            _call(host, "saltutil.refresh_pillar", wait=True)
        except CommandExecutionError as exc:
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
    _util("pairvm_schema.validate_name", name)
    if confirm is not True:
        raise CommandExecutionError(f"destroying VM {name} deletes its disc on both hosts: pass confirm=True")
    settings = _util("pairvm_schema.settings", _pillar())
    running = [h for h in _pair(settings) if name in _running_vms(h)]
    if running and not force:
        raise CommandExecutionError(
            f"VM {name} is running on {', '.join(running)}: stop it first, or force=True"
        )
    changes = {h: _call(h, "pairvm.destroy", name, confirm=True, force=force) for h in _pair(settings)}
    with _registry() as box:
        box["registry"] = __utils__["pairvm_alloc.release"](box["registry"], name)
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
    _util("pairvm_schema.validate_name", name)
    record = _call(_pair(_util("pairvm_schema.settings", _pillar()))[0], "pairvm.pillar_record", name)
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
    _util("pairvm_schema.validate_name", name)
    pair = _pair(_util("pairvm_schema.settings", _pillar()))
    if victim not in pair:
        raise CommandExecutionError(f"victim {victim!r} is not a host of the pair ({', '.join(pair)})")
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
    settings = _util("pairvm_schema.settings", _pillar())
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
# every check on that data. Each finding has a stable code; docs/verify.md lists them.

VERIFY_CODES = {
    "EHOSTDOWN": "a host of the pair did not answer pairvm.facts",
    "EQUERYFAILED": "a query on a host (DRBD, libvirt, LVM, a /machines file) or the registry failed",
    "EVMMISSING": "a VM of pillar/registry is not defined on a host (/machines/<vm> or its LV)",
    "EVMUNKNOWN": "a VM is on a host (/machines, DRBD or LV) but not in pillar/registry",
    "EMACHINESDIFF": "/machines/<vm> differs between the hosts (sha256 of the file bytes)",
    "EDRBDSPLITBRAIN": "DRBD resource StandAlone with a local disc: split brain",
    "EDRBDDISCONNECTED": "DRBD resource down or not Connected",
    "EDRBDNOTUPTODATE": "DRBD disc on a host not UpToDate",
    "EVMRUNNINGTWICE": "VM running on both hosts",
    "EVMNOTRUNNING": "VM should run (state running) but runs on neither host",
    "EVNCNOTLOCAL": "VNC of a running VM listens on an address other than 127.0.0.1",
    "EMEMCAP": "the pair's VM memory is over pairvm:memory_cap",
    "EALLOCCOLLISION": "the registry gives one value (IP, MAC, port, minor, display) to two VMs",
    "ETOOLMISSING": "a required tool is missing on a host",
    "EVGMISSING": "a volume group (here/there) is missing on a host",
    "EBRIDGEMISSING": "a bridge the VMs use is missing on a host",
}
VNC_LOCAL = "127.0.0.1"


def _finding(severity, code, vm, host, message):
    return {"severity": severity, "code": code, "vm": vm, "host": host, "message": message}


def _verify_line(finding):
    vm, host = finding["vm"], finding["host"]
    where = f"{vm}@{host}" if vm and host else vm or (f"@{host}" if host else "pair")
    return f"{finding['severity']} {finding['code']} {where}: {finding['message']}"


def _read_registry():
    """The registry as saved, read without the lock (a save is an atomic rename)."""
    path = _registry_path()
    if not os.path.exists(path):
        return {"vms": {}}
    with salt.utils.files.fopen(path, "r") as fh:
        return salt.utils.json.load(fh)


def _gather_facts(hosts, bridges, timeout):
    """{host: facts or None}, and findings for the hosts that did not answer or failed."""
    client = salt.client.get_local_client(__opts__["conf_file"])
    ret = client.cmd(hosts, "pairvm.facts", [], tgt_type="list", timeout=timeout,
                     kwarg={"bridges": sorted(bridges)}, full_return=True)
    facts, findings = {}, []
    for host in hosts:
        answer = (ret or {}).get(host)
        facts[host] = None
        if not isinstance(answer, dict) or "ret" not in answer:
            findings.append(_finding("ERROR", "EHOSTDOWN", None, host,
                                     f"did not answer pairvm.facts within {timeout}s: is the host up and "
                                     f"its salt-minion running? (salt-run manage.status)"))
        elif answer.get("retcode", 0) != 0 or not isinstance(answer["ret"], dict):
            findings.append(_finding("ERROR", "EHOSTDOWN", None, host,
                                     f"pairvm.facts failed: {answer['ret']} (are the modules synced? "
                                     f"salt {host} saltutil.sync_all)"))
        else:
            facts[host] = answer["ret"]
    return facts, findings


def _host_checks(host, fact, settings, bridges):
    """What one host's facts say about the host itself: queries, tools, VGs, bridges."""
    found = []
    for query, message in sorted((fact.get("errors") or {}).items()):
        vm = query.split("/", 1)[1] if query.startswith("machines/") else None
        found.append(_finding("ERROR", "EQUERYFAILED", vm, host, f"{query}: {message}"))
    for name, machine in sorted(fact["machines"].items()):
        if machine.get("error"):
            found.append(_finding("ERROR", "EQUERYFAILED", name, host,
                                  f"/machines/{name} is unreadable: {machine['error']}"))
    if fact["tools_missing"]:
        found.append(_finding("ERROR", "ETOOLMISSING", None, host,
                              "missing: " + ", ".join(fact["tools_missing"])
                              + " (salt " + host + " state.apply pairvm.host installs them)"))
    if "volume_groups" not in (fact.get("errors") or {}):
        for vg in settings["volume_groups"]:
            if vg not in fact["volume_groups"]:
                found.append(_finding("ERROR", "EVGMISSING", None, host,
                                      f"volume group {vg} does not exist (vgcreate {vg} on a disc)"))
    for bridge in sorted(bridges):
        if not fact["bridges"].get(bridge, {}).get("present"):
            found.append(_finding("ERROR", "EBRIDGEMISSING", None, host,
                                  f"bridge {bridge} does not exist: VMs using it cannot start here"))
    return found


def _present(fact, volume_groups):
    """{vm: [where]} of what a host holds of each VM: /machines file, DRBD resource, LV."""
    where = {}
    for name in fact["machines"]:
        where.setdefault(name, []).append(f"/machines/{name}")
    for name in fact["drbd"]:
        where.setdefault(name, []).append(f"DRBD resource {name}")
    for lv in fact["lvs"]:
        vg, _, name = lv.partition("/")
        if vg in volume_groups:
            where.setdefault(name, []).append(f"LV {lv}")
    return where


def _vm_host_checks(host, fact, expected, settings):
    """One host's view of each VM: missing, unknown, its disc, DRBD, VNC."""
    found = []
    machines, errors = fact["machines"], fact.get("errors") or {}
    for name in sorted(expected):
        if f"machines/{name}" in errors:  # unreadable: EQUERYFAILED says so
            continue
        if name not in machines:
            found.append(_finding("ERROR", "EVMMISSING", name, host,
                                  f"/machines/{name} does not exist: the VM is not defined here "
                                  f"(salt-run state.orchestrate pairvm.orch.apply)"))
            continue
        vg = machines[name].get("vg")
        if vg and "lvs" not in errors and f"{vg}/{name}" not in fact["lvs"]:
            found.append(_finding("ERROR", "EVMMISSING", name, host,
                                  f"its disc LV {vg}/{name} does not exist"))
    for name, where in sorted(_present(fact, settings["volume_groups"]).items()):
        if name not in expected:
            found.append(_finding("WARNING", "EVMUNKNOWN", name, host,
                                  f"not in pillar or the registry, but here: {', '.join(where)}"))
    if "drbd" not in errors:
        for name in sorted(machines):
            found += _drbd_checks(host, name, fact["drbd"].get(name))
    for name, listen in sorted(fact["vnc"].items()):
        if listen is not None and listen != VNC_LOCAL:
            found.append(_finding("ERROR", "EVNCNOTLOCAL", name, host,
                                  f"VNC listens on {listen}, not {VNC_LOCAL}: anyone who reaches it "
                                  f"sees the console; restart the VM with pairvm (stop, start)"))
    return found


def _drbd_checks(host, name, state):
    if not state:
        return [_finding("ERROR", "EDRBDDISCONNECTED", name, host,
                         f"DRBD resource {name} is not up (drbdadm up {name}, or pairvm autostart)")]
    found = []
    if state.get("split_brain"):
        found.append(_finding("ERROR", "EDRBDSPLITBRAIN", name, host,
                              f"DRBD resource {name} is StandAlone with its disc {state.get('disk')}: "
                              f"split brain; nothing was discarded: choose the side whose changes to "
                              f"drop (salt-run pairvm.split_brain_victim {name} HOST)"))
    elif state.get("connection") != "Connected":
        found.append(_finding("ERROR", "EDRBDDISCONNECTED", name, host,
                              f"DRBD resource {name} is {state.get('connection')}, not Connected: "
                              f"writes are not replicated to the peer"))
    if state.get("disk") != "UpToDate":
        syncing = f" (resync: {state.get('replication')})" if state.get("syncing") else ""
        found.append(_finding("ERROR", "EDRBDNOTUPTODATE", name, host,
                              f"DRBD disc of {name} is {state.get('disk')}, not UpToDate{syncing}"))
    return found


def _pair_checks(facts, expected, wanted_state):
    """What needs both hosts' facts: /machines digests, where each VM runs."""
    (host_a, fact_a), (host_b, fact_b) = sorted(facts.items())
    found = []
    for name in sorted(set(fact_a["machines"]) & set(fact_b["machines"])):
        digest_a, digest_b = fact_a["machines"][name]["digest"], fact_b["machines"][name]["digest"]
        if digest_a != digest_b:
            found.append(_finding("ERROR", "EMACHINESDIFF", name, None,
                                  f"/machines/{name} differs: {host_a} sha256 {digest_a[:12]}, "
                                  f"{host_b} sha256 {digest_b[:12]} (edited by hand? re-apply pairvm.vms)"))
    if any("libvirt" in (fact.get("errors") or {}) for fact in facts.values()):
        return found  # where the VMs run is not known: EQUERYFAILED says why
    known = expected | set(fact_a["machines"]) | set(fact_b["machines"])
    running = {host: set(fact["running"]) & known for host, fact in facts.items()}
    for name in sorted(running[host_a] & running[host_b]):
        found.append(_finding("ERROR", "EVMRUNNINGTWICE", name, None,
                              f"running on both {host_a} and {host_b}: both write to the disc; "
                              f"stop it on one host at once"))
    for name in sorted(expected):
        state, suppressed, home = wanted_state(name)
        defined = name in fact_a["machines"] or name in fact_b["machines"]
        if state != "running" or not defined or name in running[host_a] | running[host_b]:
            continue
        if suppressed:
            found.append(_finding("WARNING", "EVMNOTRUNNING", name, home,
                                  "should run (state running) but runs on neither host; it is suppressed "
                                  "from autostart"))
        else:
            found.append(_finding("ERROR", "EVMNOTRUNNING", name, home,
                                  f"should run (state running) but runs on neither host "
                                  f"(pairvm start {name} on {home or 'its home'})"))
    return found


def _wanted(definitions, facts):
    """A function: VM name -> (state, suppressed, home), from pillar, else from a host's record."""

    def wanted_state(name):
        records = [f["machines"][name] for f in facts.values() if f and name in f["machines"]]
        definition = definitions.get(name) or (records[0] if records else {})
        home = definition.get("home")
        suppressed = bool(definition.get("suppress")) or any(
            name in (f.get("suppressed") or []) for h, f in facts.items() if f and h == home
        )
        return definition.get("state", "running"), suppressed, home

    return wanted_state


def _memory_check(settings, definitions, facts):
    cap = settings.get("memory_cap") or 0
    memory = {name: d["memory"] for name, d in definitions.items()}
    for fact in facts.values():
        for name, machine in (fact or {}).get("machines", {}).items():
            if name not in memory and isinstance(machine.get("memory"), int):
                memory[name] = machine["memory"]
    total = sum(memory.values())
    if cap <= 0 or total <= cap:
        return []
    return [_finding("ERROR", "EMEMCAP", None, None,
                     f"the pair's {len(memory)} VMs total {total} MiB of memory, over "
                     f"pairvm:memory_cap {cap} MiB")]


def _count(number, noun):
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _verify_result(findings):
    order = {"ERROR": 0, "WARNING": 1}
    findings = sorted(findings, key=lambda f: (order[f["severity"]], f["code"], f["vm"] or "",
                                               f["host"] or "", f["message"]))
    errors = sum(1 for f in findings if f["severity"] == "ERROR")
    warnings = len(findings) - errors
    result = {
        "ok": errors == 0,
        "summary": f"{_count(errors, 'error')}, {_count(warnings, 'warning')}",
        "lines": [_verify_line(f) for f in findings],
        "findings": findings,
        "retcode": 1 if errors else 0,
    }
    if errors:
        __context__["retcode"] = 1
    return result


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
    settings = _util("pairvm_schema.settings", pairvm)
    definitions = _util("pairvm_schema.vms", pairvm)
    findings = []
    try:
        registry = _read_registry()
        findings += [_finding("ERROR", "EALLOCCOLLISION", None, None, message)
                     for message in __utils__["pairvm_alloc.collisions"](registry)]
    except (OSError, ValueError, SaltInvocationError) as exc:
        registry = {"vms": {}}
        findings.append(_finding("ERROR", "EQUERYFAILED", None, None,
                                 f"cannot read the registry {_registry_path()}: {exc}"))
    expected = set(definitions) | set((registry.get("vms") or {}) if isinstance(registry, dict) else {})
    bridges = {settings["bridge"]} | {d["bridge"] for d in definitions.values() if d.get("bridge")}
    hosts = _pair(settings)
    facts, down = _gather_facts(hosts, bridges, timeout)
    findings += down
    for host, fact in facts.items():
        if fact is not None:
            findings += _host_checks(host, fact, settings, bridges)
            findings += _vm_host_checks(host, fact, expected, settings)
    if all(fact is not None for fact in facts.values()):
        findings += _pair_checks(facts, expected, _wanted(definitions, facts))
    findings += _memory_check(settings, definitions, facts)
    return _verify_result(findings)
