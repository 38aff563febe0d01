"""External pillar: the master's pairvm registry of the minion's own pair.

Adds to pillar ``pairvm:`` of a pair's host what the master keeps for that
pair (``pairvmlib.registry``): the allocations it gave (``allocations``:
{vm: {ip, mac, drbd_port, drbd_minor, vnc_display}}), the VMs created from
the CLI with ``salt-run pairvm.create`` (merged into ``vms``), and, when
pillar sets no ``drbd_options:shared_secret``, the DRBD secret the master
generated for the pair (as ``drbd_options:shared_secret``).

The pair is the one the minion's own pillar names (``pairvm:pair_name``,
given to it by the top file, by minion id): a minion that is not a host of
that pair (``pairvm:pair``), or not one of the hosts the registry recorded
for it, gets nothing. So a host never sees another pair's VMs, allocations
or secret. Only one pair's registry is read, however many pairs there are.
The registry is written only by the ``pairvm`` runner; this module reads.

Master configuration:

.. code-block:: yaml

    ext_pillar:
      - pairvm_registry: {}
"""

import logging

from pairvmlib import alloc, names, registry

log = logging.getLogger(__name__)


def ext_pillar(minion_id, pillar, *args, **kwargs):  # pylint: disable=unused-argument
    """Return the registry and secret of ``minion_id``'s own pair as pillar ``pairvm``."""
    pairvm = pillar.get("pairvm") if isinstance(pillar, dict) else None
    if not isinstance(pairvm, dict) or not isinstance(pairvm.get("pair"), dict) \
            or minion_id not in pairvm["pair"]:
        return {}
    pair = pairvm.get("pair_name") or registry.DEFAULT
    if not names.is_pair_name(pair) or not registry.exists(__opts__, pair):
        return {}
    saved = registry.read(__opts__, pair)
    recorded = alloc.registry_hosts(saved)
    if recorded and minion_id not in recorded:
        log.error("pairvm_registry: %s's pillar names pair %r, whose registry is of %s: serving it "
                  "nothing (two pairs with one pairvm:pair_name? salt-run pairvm.allocate says more)",
                  minion_id, pair, ", ".join(recorded))
        return {}
    options = pairvm.get("drbd_options")
    given = isinstance(options, dict) and options.get("shared_secret")
    return registry.as_pillar(saved, None if given else registry.secret(__opts__, pair))
