"""DRBD's running configuration as ``drbdsetup show`` prints it (8.4), parsed. Pure.

One ``drbdsetup show all`` answers both questions the formula asks of it: which
resources authenticate their peer (``cram-hmac-alg`` and ``shared-secret``), and
which allow two primaries (a live migration's window, or one left open). The text
holds the shared secrets: callers never log or return it.
"""

import re

_RESOURCE_RE = re.compile(r'^resource\s+"?([^\s"{]+)"?\s*\{', re.MULTILINE)


def resources(show):
    """{resource: its block of text} of ``drbdsetup show`` text."""
    starts = list(_RESOURCE_RE.finditer(show))
    ends = [after.start() for after in starts[1:]] + [len(show)]
    return {here.group(1): show[here.end():end] for here, end in zip(starts, ends, strict=False)}


def _option(block, name, value=r"\S"):
    return re.search(rf"^\s*{name}\s+{value}", block, re.MULTILINE) is not None


def peer_auth(show):
    """{resource: authenticates} for the resources whose connection is configured (a
    ``_remote_host`` section): True with ``cram-hmac-alg`` and a ``shared-secret``."""
    return {name: _option(block, "cram-hmac-alg") and _option(block, "shared-secret")
            for name, block in resources(show).items() if "_remote_host" in block}


def two_primaries(show):
    """Whether ``drbdsetup show`` text (one resource) has ``allow-two-primaries yes``."""
    return _option(show, "allow-two-primaries", r"yes\s*;")


def two_primaries_resources(show):
    """The resources of ``drbdsetup show all`` text that allow two primaries, sorted."""
    return sorted(name for name, block in resources(show).items() if two_primaries(block))
