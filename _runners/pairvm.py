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
