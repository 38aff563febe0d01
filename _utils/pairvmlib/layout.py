"""Where pairvm keeps things on a host and on the master: one definition each.

Standard library only: the host command imports it too. Code reads these
as ``layout.NAME`` at call time (tests point them into a temporary tree).
"""

import os

# Layer 2 (docs/data-model.md): /machines/<vm> and this host's view of the pair.
MACHINES_DIR = "/machines"
GLOBAL_NAME = "_global"
DRBD_DIR = "/etc/drbd.d"
LOCK_DIR = "/run/lock/pairvm"
STATE_DIR = "/var/lib/pairvm"
SUPPRESS_DIR = "/var/lib/pairvm/suppressed"
# Written by DRBD's split-brain handler (pairvmlib.render), read by the drbd module.
SPLIT_BRAIN_DIR = "/var/lib/pairvm/split-brain"
SEED_DIR = "/var/lib/pairvm/seeds"
IMAGE_CACHE_DIR = "/var/cache/pairvm/images"
SERIAL_LOG_DIR = "/var/log/libvirt/qemu"
# The master's registry, under its cachedir.
REGISTRY = os.path.join("pairvm", "registry.json")


def machine_path(name):
    return os.path.join(MACHINES_DIR, name)


def global_path():
    return os.path.join(MACHINES_DIR, GLOBAL_NAME)


def resource_path(name):
    return os.path.join(DRBD_DIR, f"{name}.res")


def drbd_device(minor):
    """The block device of DRBD minor ``minor`` (what a VM's disc is)."""
    return f"/dev/drbd{minor}"


def seed_path(name):
    return os.path.join(SEED_DIR, f"{name}.iso")


def serial_log_path(name):
    return os.path.join(SERIAL_LOG_DIR, f"{name}-serial.log")


def registry_path(opts):
    """The registry file of a master whose options are ``opts``."""
    return os.path.join(opts["cachedir"], REGISTRY)
