"""The files of a cloud-init NoCloud seed for ``pairvm.image``.

Pure logic (no I/O): the text of ``meta-data``, ``user-data`` and
``network-config``, which ``pairvm.image`` puts on an ISO with volume id
``cidata``. A guest with cloud-init reads it at its first boot (and again
only when ``instance-id`` changes).

The password reaches these files only as a SHA-512 crypt hash: callers pass
the hash, never the plaintext.
"""

import ipaddress

import yaml

VOLUME_ID = "cidata"  # the label NoCloud looks for
FILES = ("meta-data", "user-data", "network-config")
ISO_TOOLS = ("genisoimage", "xorriso")
FIRSTBOOT_PATH = "/var/lib/pairvm/firstboot"


def _yaml(data):
    return yaml.safe_dump(data, default_flow_style=False, sort_keys=False, width=2**31 - 1)


def meta_data(instance_id, hostname):
    """
    ``meta-data``: the instance id (a new one per image run: cloud-init runs
    its once-per-instance modules again) and the FQDN.

    Example:

    .. code-block:: python

        seed.meta_data("pairvm-vm1-1700000000", "vm1.example.org")
    """
    return _yaml({"instance-id": instance_id, "local-hostname": hostname})


def user_data(password_hash, hostname, ssh_keys=(), firstboot=None):
    """
    ``user-data`` (``#cloud-config``): root's password as the given SHA-512
    crypt hash (never expired), root's SSH keys, the host name, and the
    optional first-boot script (its text), written to
    ``/var/lib/pairvm/firstboot`` and run once by ``runcmd``.

    Example:

    .. code-block:: python

        seed.user_data("$6$salt$hash...", "vm1.example.org", ["ssh-ed25519 AAAA..."])
    """
    config = {
        "hostname": hostname.split(".")[0],
        "fqdn": hostname,
        "disable_root": False,
        "chpasswd": {"expire": False, "users": [{"name": "root", "password": password_hash, "type": "hash"}]},
    }
    if ssh_keys:
        config["ssh_authorized_keys"] = list(ssh_keys)
    if firstboot is not None:
        config["write_files"] = [{"path": FIRSTBOOT_PATH, "permissions": "0700", "owner": "root:root",
                                  "content": firstboot}]
        config["runcmd"] = [[FIRSTBOOT_PATH]]
    return "#cloud-config\n" + _yaml(config)


def network_config(record, interface="eth0"):
    """
    ``network-config`` (version 1): the VM's NIC, found by its MAC, with the
    VM's static IP, the pool's netmask and gateway.

    Example:

    .. code-block:: python

        seed.network_config(record)
    """
    net = ipaddress.IPv4Network(f"{record['ip']}/{record['prefix']}", strict=False)
    subnet = {"type": "static", "address": record["ip"], "netmask": str(net.netmask)}
    if record.get("gateway"):
        subnet["gateway"] = record["gateway"]
    return _yaml({"version": 1, "config": [{
        "type": "physical", "name": interface, "mac_address": record["mac"], "subnets": [subnet],
    }]})


def files(record, instance_id, hostname, password_hash, ssh_keys=(), firstboot=None):
    """
    {file name: text} of the whole seed.

    Example:

    .. code-block:: python

        seed.files(record, "pairvm-vm1-1", "vm1.example.org", "$6$...")
    """
    texts = (meta_data(instance_id, hostname), user_data(password_hash, hostname, ssh_keys, firstboot),
             network_config(record))
    return dict(zip(FILES, texts, strict=True))


def iso_argv(tool, output, paths):
    """The argv that puts ``paths`` on an ISO 9660 image ``output`` labelled
    ``VOLUME_ID`` (Joliet and Rock Ridge names), with ``tool`` from ``ISO_TOOLS``.

    Example:

    .. code-block:: python

        seed.iso_argv("genisoimage", "/tmp/seed.iso", ["/tmp/w/meta-data", "/tmp/w/user-data"])
    """
    front = {"genisoimage": ["genisoimage"], "xorriso": ["xorriso", "-as", "mkisofs"]}[tool]
    return [*front, "-quiet", "-o", output, "-V", VOLUME_ID, "-J", "-R", *paths]
