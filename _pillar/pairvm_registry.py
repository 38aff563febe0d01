"""External pillar: the master's pairvm registry.

Adds to pillar ``pairvm:`` the allocations the master gave (``allocations``:
{vm: {ip, mac, drbd_port, drbd_minor, vnc_display}}) and the VMs created from
the CLI with ``salt-run pairvm.create`` (merged into ``vms``), so states and
execution modules on the hosts see one registry. The registry is written only
by the ``pairvm`` runner; this module only reads it.

Master configuration:

.. code-block:: yaml

    ext_pillar:
      - pairvm_registry: {}
"""

import os

import salt.utils.files
import salt.utils.json

REGISTRY = os.path.join("pairvm", "registry.json")


def ext_pillar(minion_id, pillar, *args, **kwargs):  # pylint: disable=unused-argument
    """Return the registry's allocations and CLI-created VMs as pillar ``pairvm``."""
    path = os.path.join(__opts__["cachedir"], REGISTRY)
    if not os.path.exists(path):
        return {}
    with salt.utils.files.fopen(path, "r") as fh:
        registry = salt.utils.json.load(fh)
    vms = registry.get("vms", {})
    return {
        "pairvm": {
            "allocations": {name: entry["alloc"] for name, entry in vms.items()},
            "vms": {name: entry["definition"] for name, entry in vms.items() if entry.get("definition")},
        }
    }
