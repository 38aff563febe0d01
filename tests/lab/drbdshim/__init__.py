"""The lab's stand-in for the DRBD 8.4 kernel module (see README.md).

Lab helpers for tests: ``cut_link(res)`` / ``restore_link(res)`` fail or heal
the replication link of one resource, as pulling the cable would.
"""

from . import kernel, state


def _apply(res):
    with state.locked(res) as box:
        if box["state"] is not None:
            kernel.settle(box["state"])


def cut_link(res):
    """Cut the replication link of ``res``: connected hosts go WFConnection."""
    state.set_link(res, up=False)
    _apply(res)


def restore_link(res):
    """Heal the link: hosts that still want to connect do the handshake."""
    state.set_link(res, up=True)
    _apply(res)


def resource_state(res):
    """The shim's raw state of ``res`` (for debugging tests)."""
    with state.locked(res) as box:
        return box["state"]
