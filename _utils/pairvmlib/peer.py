"""The peer runner interface: what a pair host may run on the master.

The host command runs a few operations that need the master (``pairvm
create NAME here|there MEMORY DISC``, ``pairvm cdrom NAME ISO|eject``,
``pairvm chkconfig``) through Salt's own minion-to-master path:
``salt-call publish.runner FUN arg="[...]"``. The master runs a runner
function for a minion only when its ``peer_run`` setting allows both: its
keys are matched against the minion id and its lists against the function,
each with Python's ``re.match``, a match at the start only. So every entry
is escaped and anchored at both ends here: ``hostA`` alone would let
``hostA2`` in, ``pairvm.host_create`` would let ``pairvm.host_createX``.

A master worker runs a peer runner to its end before it takes its next
request, and the requests of the minions that runner waits for (their job
returns, their pillar) may be queued behind it: a runner that calls hosts
would stall. So ``minion_runner`` requests get a worker pool of their own
(``worker_pools``, Salt 3008's tunable worker pools).

Pure: ``acl``, ``worker_pools`` and ``config_text`` (the master's
``master.d`` file).
"""

import copy
import re

import yaml

# The runner functions a pair host needs (``_runners/pairvm_peer.py``); each acts only
# on the caller's own pair.
HOST_RUNNERS = ("pairvm.host_create", "pairvm.host_cdrom", "pairvm.host_chkconfig")
# The master configuration file the runner pairvm.peer_acl writes (in master.d/).
CONFIG_NAME = "pairvm-peer.conf"
# The worker pool of the peer runner calls: two host commands at a time, more wait their turn.
POOL = "pairvm_peer"
POOL_WORKERS = 2


def exactly(text):
    """A regular expression that ``re.match`` accepts for ``text`` and nothing else."""
    return f"^{re.escape(text)}$"


def acl(hosts):
    """
    The master's ``peer_run`` setting: each pair host (``hosts``: minion ids)
    may run exactly the runner functions of ``HOST_RUNNERS``.

    Example:

    .. code-block:: python

        peer.acl(["hostA", "hostB"])  # {"^hostA$": ["^pairvm\\\\.host_create$", ...], ...}
    """
    functions = [exactly(function) for function in HOST_RUNNERS]
    return {exactly(host): list(functions) for host in sorted(set(hosts))}


def worker_pools(current):
    """
    The master's ``worker_pools`` with the peer runner calls (command
    ``minion_runner``) in a pool of their own, ``POOL``, unless a pool of
    ``current`` (the effective layout) names that command already. The other
    pools stay as they are.

    Example:

    .. code-block:: python

        peer.worker_pools({"default": {"worker_count": 5, "commands": ["*"]}})
    """
    pools = copy.deepcopy(current)
    if not any("minion_runner" in pool.get("commands", ()) for pool in pools.values()):
        pools[POOL] = {"worker_count": POOL_WORKERS, "commands": ["minion_runner"]}
    return pools


def settings(hosts, current_pools):
    """The master settings the host command needs: ``peer_run`` for ``hosts``, and
    ``worker_pools`` from the master's effective layout (None: pooling is off, left so)."""
    wanted = {"peer_run": acl(hosts)}
    if current_pools is not None:
        wanted["worker_pools"] = worker_pools(current_pools)
    return wanted


def config_text(wanted):
    """The text of ``master.d/pairvm-peer.conf`` holding the master settings ``wanted``."""
    head = ("# Managed by the pairvm formula (salt-run pairvm.peer_acl write=True): the pair hosts'\n"
            "# host command may run these runner functions through publish.runner, in a worker\n"
            "# pool of their own. The master reads this when it starts: restart it after a change.\n")
    return head + yaml.safe_dump(wanted, default_flow_style=False, sort_keys=True)
