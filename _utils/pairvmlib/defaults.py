"""Every default of pillar ``pairvm:``, in one place.

The schema fills them in (``pairvmlib.schema``), the SLS files get them
through ``salt['pairvm_host.defaults']()`` (``salt/pairvm/map.jinja``), and
``pillar.example`` documents each key. Standard library only.
"""

import copy

SETTINGS = {
    # The pair's name: its registry on the master (pairs/<name>) and the word
    # operators give as pair=. One pair needs none; each of several needs its own.
    "pair_name": "default",
    "pair": {},
    "drbd": {"port_range": [7800, 7999], "minor_range": [0, 199]},
    "vnc": {"display_range": [1, 99]},
    "mac_prefix": "52:54:00",
    "bridge": "br0",
    "memory_cap": 0,
    "domain_type": "kvm",
    "libvirt_uri": "qemu:///system",
    "volume_groups": ["here", "there"],
    "vms": {},
}
# network: the public network (L2 segment) the pool is on; pools of pairs on one
# network must not overlap.
POOL = {"reserve_first": 4, "reserved": [], "network": "default"}
BACKUP = {
    "key": "/root/.ssh/pairvm_backup",
    "known_hosts": "/root/.ssh/known_hosts",
    "port": 22,
    "speed": 10240,  # KiB/s
    "compress": "gzip",
    "snapshot_size": "20%",
    "schedule": {},
}
# Host setup (salt/pairvm/host); docs/host-pillar.md documents each key.
HOST = {
    "manage_packages": True,
    "packages": [
        "qemu-system-x86", "qemu-utils", "libvirt-daemon-system", "libvirt-clients", "python3-libvirt",
        "drbd-utils", "kmod", "lvm2", "bridge-utils", "iproute2", "ifupdown", "vlan", "socat", "pigz",
        "zstd", "pv", "openssl", "iputils-arping", "openssh-server", "openssh-client", "genisoimage",
        "bash-completion",
    ],
    # The libvirt binding in Salt's own Python, when that is not Debian's (onedir
    # packages, a virtualenv): built by pip with these Debian packages.
    "libvirt_python": "libvirt-python==12.8.0",
    "build_packages": ["libvirt-dev", "pkg-config", "gcc"],
    "salt_python": None,  # the interpreter to install it into; default the minion's own
    "network": {"file": "/etc/network/interfaces.d/pairvm", "apply": True, "admin": None,
                "replication": None, "vlans": {}, "bridge": None},
    "volume_groups": {},
    "libvirt": {"manage_service": True, "service": "libvirtd"},
    "ssh": {
        "key_file": "/root/.ssh/id_ed25519",
        "authorized_keys": "/root/.ssh/authorized_keys",
        "known_hosts": "/root/.ssh/known_hosts",
        "host_key": "/etc/ssh/ssh_host_ed25519_key.pub",
        "key_options": ["no-agent-forwarding", "no-port-forwarding", "no-X11-forwarding"],
        "peer_keys": {},
    },
    "completion": {"path": "/etc/bash_completion.d/pairvm"},
    # The systemd unit that runs `pairvm autostart` at boot, master or not.
    "boot": {"unit": "/etc/systemd/system/pairvm-autostart.service", "enable": True},
    "hosts": {},
}
CLI = {"path": "/usr/local/sbin/pairvm"}
# The image catalogue of pairvm.image out of the box: the current Debian and Ubuntu LTS
# cloud images, each checked against the checksum file its distribution publishes beside it
# (so a point release needs no new hash here). ``mirror`` names a base URL of IMAGE_MIRRORS
# (pillar ``pairvm:image_mirrors`` points it elsewhere), ``path`` is below it.
IMAGE_MIRRORS = {
    "debian": "https://cloud.debian.org/images/cloud",
    "ubuntu": "https://cloud-images.ubuntu.com",
}
IMAGES = {
    "trixie": {"mirror": "debian", "path": "trixie/latest/debian-13-generic-amd64.qcow2",
               "format": "qcow2", "checksums": "SHA512SUMS"},
    "bookworm": {"mirror": "debian", "path": "bookworm/latest/debian-12-generic-amd64.qcow2",
                 "format": "qcow2", "checksums": "SHA512SUMS"},
    "noble": {"mirror": "ubuntu", "path": "noble/current/noble-server-cloudimg-amd64.img",
              "format": "qcow2", "checksums": "SHA256SUMS"},
    "jammy": {"mirror": "ubuntu", "path": "jammy/current/jammy-server-cloudimg-amd64.img",
              "format": "qcow2", "checksums": "SHA256SUMS"},
}
# Metrics (pairvm.metrics, write_metrics, graphite_stats; salt/pairvm/host/metrics.sls).
METRICS = {
    "textfile": "/var/lib/prometheus/node-exporter/pairvm.prom",  # node_exporter's textfile collector
    "interval": 60,  # seconds between two writes of the textfile (0: no schedule)
    "graphite": {"carbon": None, "prefix": "", "interval": 60},  # carbon HOST[:PORT]; None: no schedule
}
# The pairvm_drbd beacon (salt/pairvm/host/watch.sls): on, and its debounce (seconds).
WATCH = {"beacon": True, "debounce": 2, "max_delay": 30}
# The reactor's reconnect of a plainly disconnected DRBD resource (pairvm.reconnect).
RECONNECT = {"attempts": 5, "backoff": 2}  # tries; seconds before the second, doubled each time


def pillar():
    """The defaults of the whole pillar ``pairvm:``, a fresh copy (map.jinja merges pillar over it)."""
    return copy.deepcopy({**SETTINGS, "backup": BACKUP, "host": HOST, "cli": CLI, "metrics": METRICS,
                          "watch": WATCH})
