"""The functional tier: one lab host, real tools, Salt through ``salt-call --local``.

The host is ``hostA`` of the lab (its own namespaces, libvirtd, LVM on loop
devices, the shims first on PATH), without a master: the formula's modules
are synced from a local file root as a masterless minion would.
"""


import pytest

import salt.utils.yaml
from tests.lab import lab as labmod
from tests.lab import saltlab
from tests.lab.hosts import REPO


@pytest.fixture(scope="session")
def lab_host():
    lab = labmod.Lab(("hostA",))
    lab.up()
    host = lab.hosts["hostA"]
    minion = {
        "id": host.name,
        "file_client": "local",
        "file_roots": {"base": [str(saltlab.file_tree(host.dir / "srv"))]},
        "pillar_roots": {"base": [str(REPO / "pillar")]},
        "root_dir": str(host.dir / "salt"),
        **saltlab.GRAINS,
    }
    (host.root / "etc/salt/minion").write_text(salt.utils.yaml.safe_dump(minion))
    try:
        saltlab.SaltCall(host)("saltutil.sync_all")
        yield host
    finally:
        lab.down()


@pytest.fixture(scope="session")
def salt_call(lab_host):
    return saltlab.SaltCall(lab_host)
