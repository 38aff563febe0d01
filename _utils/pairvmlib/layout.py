"""Where pairvm keeps things on a host and on the master: one definition each.

Standard library only: the host command imports it too. Code reads these
as ``layout.NAME`` at call time (tests point them into a temporary tree).
"""

import os

# Layer 2 (docs/data-model.md): /machines/<vm> and this host's view of the pair.
MACHINES_DIR = "/machines"
DEV_DIR = "/dev"
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
# The master's registries, under its cachedir: pairvm/pairs/<pair>/{registry.json,drbd-secret}
# (root only), one lock for every write. pairvm/registry.json is the single registry of
# versions before pairs; it becomes pair "default"'s.
MASTER_DIR = "pairvm"
PAIRS_DIR = "pairs"
REGISTRY_NAME = "registry.json"
SECRET_NAME = "drbd-secret"


def machine_path(name):
    return os.path.join(MACHINES_DIR, name)


def global_path():
    return os.path.join(MACHINES_DIR, GLOBAL_NAME)


def resource_path(name):
    return os.path.join(DRBD_DIR, f"{name}.res")


def drbd_device(minor):
    """The block device of DRBD minor ``minor`` (what a VM's disc is)."""
    return f"/dev/drbd{minor}"


def lv_device(lv):
    """The block device of LV ``lv`` (``"vg/name"``)."""
    return os.path.join(DEV_DIR, lv)


def seed_path(name):
    return os.path.join(SEED_DIR, f"{name}.iso")


def serial_log_path(name):
    return os.path.join(SERIAL_LOG_DIR, f"{name}-serial.log")


def master_dir(opts):
    """The formula's directory on a master whose options are ``opts``."""
    return os.path.join(opts["cachedir"], MASTER_DIR)


def pair_dir(opts, pair):
    return os.path.join(master_dir(opts), PAIRS_DIR, pair)


def registry_path(opts, pair):
    """The registry file of pair ``pair``."""
    return os.path.join(pair_dir(opts, pair), REGISTRY_NAME)


def secret_path(opts, pair):
    """The DRBD shared secret the master generated for pair ``pair`` (mode 0600)."""
    return os.path.join(pair_dir(opts, pair), SECRET_NAME)


def legacy_registry_path(opts):
    return os.path.join(master_dir(opts), REGISTRY_NAME)


def registry_lock_path(opts):
    return os.path.join(master_dir(opts), "registry.lock")
