"""The peer runner interface: what a pair host may run on the master.

The host command runs a few operations that need the master (``pairvm
create NAME here|there MEMORY DISC``, ``pairvm cdrom NAME ISO|eject``,
``pairvm chkconfig``, ``pairvm swap NAME``) through Salt's own minion-to-master path:
``salt-call publish.runner FUN arg="[...]"``. The master runs a runner
function for a minion only when its ``peer_run`` setting allows both: its
keys are matched against the minion id and its lists against the function,
each with Python's ``re.match``, a match at the start only. So every entry
is escaped and anchored at both ends here: ``hostA`` alone would let
``hostA2`` in, ``pairvm.host_create`` would let ``pairvm.host_createX``.

Pure: ``acl`` and ``config_text`` (the master's ``master.d`` file).
"""

import re

import yaml

# The runner functions a pair host needs (``_runners/pairvm_peer.py``); each acts only
# on the caller's own pair, and host_job reads only the caller's own jobs.
HOST_RUNNERS = ("pairvm.host_create", "pairvm.host_cdrom", "pairvm.host_chkconfig", "pairvm.host_swap",
                "pairvm.host_job")
# The master configuration file the runner pairvm.peer_acl writes (in master.d/).
CONFIG_NAME = "pairvm-peer.conf"


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


def config_text(hosts):
    """The text of ``master.d/pairvm-peer.conf``: a comment, then ``peer_run``."""
    head = ("# Managed by the pairvm formula (salt-run pairvm.peer_acl write=True): the pair hosts'\n"
            "# host command may run these runner functions through publish.runner. The master\n"
            "# reads peer_run when it starts: restart it after a change.\n")
    return head + yaml.safe_dump({"peer_run": acl(hosts)}, default_flow_style=False, sort_keys=True)
