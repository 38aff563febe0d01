"""pairvm states: a VM present, running or stopped on its home host, or absent.

Each state calls the matching ``pairvm`` execution function, which lists the
exact commands it runs (or, with ``test=True``, would run) in ``changes``.

.. code-block:: yaml

    vm1-present:
      pairvm.vm_present:
        - name: vm1
    vm1-running:
      pairvm.vm_running:
        - name: vm1
        - require:
          - pairvm: vm1-present
"""

from salt.exceptions import CommandExecutionError

__virtualname__ = "pairvm"


def __virtual__():
    if "pairvm.create" not in __salt__:
        return (False, "pairvm state: the pairvm execution module is not available")
    return __virtualname__


def _apply(name, function, *args, **kwargs):
    test = bool(__opts__.get("test"))
    ret = {"name": name, "changes": {}, "result": True, "comment": ""}
    try:
        out = __salt__[function](name, *args, test=test, **kwargs)
    except CommandExecutionError as exc:
        return {**ret, "result": False, "comment": str(exc)}
    ret["comment"] = out["comment"]
    if out["changes"]:
        ret["changes"] = {"commands": out["changes"]}
        if test:
            ret["result"] = None
    return ret


def vm_present(name):
    """
    VM ``name`` (from pillar) has its LV, DRBD resource and config on this host.
    """
    return _apply(name, "pairvm.create")


def _home(name):
    return __salt__["pairvm.pillar_record"](name)["home"]


def vm_running(name):
    """
    VM ``name`` runs on its home host, which starts it.

    On the peer this state changes nothing and checks the peer's part: the
    VM's DRBD resource is up here, so the home host's writes reach this
    replica. It passes when the VM runs at home (DRBD Primary there) or
    here (started away from home, which the comment says); it fails when
    the resource is down here.
    """
    me = __grains__["id"]
    try:
        home = _home(name)
        if home == me:
            return _apply(name, "pairvm.start")
        drbd = __salt__["drbd.status"](name)
        running_here = any(row["name"] == name and row["running"]
                           for row in __salt__["pairvm.list"](fields="running")["vms"])
    except CommandExecutionError as exc:
        return {"name": name, "changes": {}, "result": False, "comment": str(exc)}
    ret = {"name": name, "changes": {}, "result": True}
    if running_here:
        return {**ret, "comment": f"VM {name} runs here on {me}, away from its home {home}"}
    if not drbd:
        return {**ret, "result": False,
                "comment": f"VM {name}'s DRBD resource is not up on {me}: its home {home} cannot replicate "
                           f"to this host (pairvm autostart here brings it up)"}
    where = "runs on its home" if drbd.get("peer_role") == "Primary" else "is started by its home"
    return {**ret, "comment": f"VM {name} {where} {home}; its replica here is {drbd.get('connection')}"}


def vm_stopped(name, graceful=True, timeout=60):
    """
    VM ``name`` does not run on this host (ACPI shutdown first by default).
    """
    return _apply(name, "pairvm.stop", graceful=graceful, timeout=timeout)


def vm_absent(name, force=False):
    """
    VM ``name`` has nothing left on this host. Its disc here is deleted.
    """
    return _apply(name, "pairvm.destroy", confirm=True, force=force)
