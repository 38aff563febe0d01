"""Which lab this process works on. Several labs can run at once on one machine
(scripts/test runs its lab tiers side by side), each with names of its own:
``PVLAB_INSTANCE=2`` gives network namespaces ``pvlab2-*``, files under
``/var/tmp/pvlab2``, ``/run/pvlab2``, ``/tmp/pvsalt2`` and the lock
``/run/lock/pvlab2.lock``. Unset, the lab is the default one (``pvlab``).

Addresses stay the same in every lab: each lab's hosts and master live in
network namespaces of their own, so they never meet.
"""

import os
import re

SUFFIX = os.environ.get("PVLAB_INSTANCE", "")
if not re.fullmatch(r"[0-9]{0,2}", SUFFIX):
    raise SystemExit(f"PVLAB_INSTANCE must be a number below 100 (or unset), not {SUFFIX!r}")
# Names of every lab's namespaces and paths, whatever its instance.
ANY_NETNS = re.compile(r"^pvlab([0-9]*)-")


def name(base):
    """``base`` made this lab's own: ``pvlab`` -> ``pvlab2`` for PVLAB_INSTANCE=2."""
    return base + SUFFIX
