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
    VM ``name`` runs on its home host. On the peer this state only checks.
    """
    try:
        home = _home(name)
    except CommandExecutionError as exc:
        return {"name": name, "changes": {}, "result": False, "comment": str(exc)}
    if home != __grains__["id"]:
        return {"name": name, "changes": {}, "result": True,
                "comment": f"VM {name} runs on its home host {home}"}
    return _apply(name, "pairvm.start")


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
