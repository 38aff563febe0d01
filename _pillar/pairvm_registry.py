"""External pillar: the master's pairvm registry.

Adds to pillar ``pairvm:`` the allocations the master gave (``allocations``:
{vm: {ip, mac, drbd_port, drbd_minor, vnc_display}}) and the VMs created from
the CLI with ``salt-run pairvm.create`` (merged into ``vms``), so states and
execution modules on the hosts see one registry. The registry is written only
by the ``pairvm`` runner (``pairvmlib.registry``); this module only reads it.

Master configuration:

.. code-block:: yaml

    ext_pillar:
      - pairvm_registry: {}
"""

import os

from pairvmlib import layout, registry


def ext_pillar(minion_id, pillar, *args, **kwargs):  # pylint: disable=unused-argument
    """Return the registry's allocations and CLI-created VMs as pillar ``pairvm``."""
    if not os.path.exists(layout.registry_path(__opts__)):
        return {}
    return registry.as_pillar(registry.read(__opts__))
