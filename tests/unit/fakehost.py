"""A fake pair host for the execution modules' unit tests.

``Host`` stands for one host as the ``pairvm`` modules see it: LVM, DRBD and
libvirt behind Salt's dunders and ``libvirt.open``, the real library
(``pairvmlib``), and /machines, /etc/drbd.d and friends (``pairvmlib.layout``)
redirected into a temporary tree. Every ``pairvm*`` execution module file is
loaded once (``MODULES``) and gets the same dunders, as Salt's loader gives
files that share a virtual name.
"""

import copy
import json
import xml.etree.ElementTree as ET
from unittest import mock

import libvirt

from pairvmlib import alloc, layout, render, schema
from salt.exceptions import CommandExecutionError
from tests.unit.conftest import load

MODULE_FILES = ("pairvm", "pairvm_console", "pairvm_storage", "pairvm_backup", "pairvm_image",
                "pairvm_health", "pairvm_migrate", "pairvm_metrics", "pairvm_watch", "pairvm_swap")
MODULES = {name: load(f"_modules/{name}.py", f"unit_{name}") for name in MODULE_FILES}


def _public(module):
    aliases = getattr(module, "__func_alias__", {})
    return {aliases.get(name, name): func for name, func in vars(module).items()
            if callable(func) and not name.startswith("_")
            and getattr(func, "__module__", "") == module.__name__}


# Every pairvm.* function, merged from the files as Salt's loader merges them.
PAIRVM = type("PairvmFunctions", (), {})()
for _module in MODULES.values():
    vars(PAIRVM).update(_public(_module))
# The directories of pairvmlib.layout a test host redirects into its tree.
LAYOUT_DIRS = {"MACHINES_DIR": "machines", "DRBD_DIR": "drbd.d", "LOCK_DIR": "lock",
               "SUPPRESS_DIR": "suppressed",
               "SERIAL_LOG_DIR": "serial", "SEED_DIR": "seeds", "IMAGE_CACHE_DIR": "images",
               "SPLIT_BRAIN_DIR": "split-brain", "DEV_DIR": "dev"}


# As the master serves them: pillar's tuning, and the pair's secret (ext_pillar pairvm_registry).
DRBD_OPTIONS = {"c_plan_ahead": 0, "resync_rate": "100M", "connect_int": 2, "shared_secret": "Zm9v+bar/baz="}
PILLAR = {"pairvm": {
    "pair": {
        "hostA": {"admin_ip": "10.77.0.11", "replication_ip": "10.78.0.11"},
        "hostB": {"admin_ip": "10.77.0.12", "replication_ip": "10.78.0.12"},
    },
    "pool": {"cidr": "10.79.0.0/24", "gateway": "10.79.0.1"},
    "bridge": "br0",
    "memory_cap": 4096,
    "domain_type": "qemu",
    "drbd_options": DRBD_OPTIONS,
    "vms": {
        "vm1": {"home": "hostA", "memory": 256, "disc": "1G"},
        "vm2": {"home": "hostB", "memory": 512, "disc": "2G", "vcpus": 2},
    },
    "allocations": {
        "vm1": {"ip": "10.79.0.5", "mac": "52:54:00:00:00:01", "drbd_port": 7800, "drbd_minor": 0,
                "vnc_display": 1},
        "vm2": {"ip": "10.79.0.6", "mac": "52:54:00:00:00:02", "drbd_port": 7801, "drbd_minor": 1,
                "vnc_display": 2},
    },
}}
# What changes a host; everything else __salt__ offers here only reads.
MUTATING = {
    "lvm.lvcreate", "lvm.lvremove", "lvm.lvextend", "drbd.create_md", "drbd.up", "drbd.down",
    "drbd.primary", "drbd.secondary", "drbd.resize", "drbd.adjust", "drbd.connect", "drbd.disconnect",
    "virsh.define", "virsh.start", "virsh.destroy", "virsh.shutdown", "virsh.undefine",
    "virsh.update_device", "garp",
}
BAD_NAMES = ["bad;name", "../x", "abcdefghijklm", "all", "Vm1", "", "vm 1", "-rf"]




def drbd_state(role="Secondary", peer_role="Secondary", connection="Connected", disk="UpToDate",
               peer_disk="UpToDate", split_brain=False):
    """One resource as drbd.status reports it. A split brain only when ``split_brain=True``:
    on DRBD 8.4 a plain ``drbdadm disconnect`` is StandAlone too (the kernel tier showed
    it); only the kernel's split-brain handler tells them apart."""
    standalone = connection == "StandAlone"
    return {
        "role": role, "peer_role": peer_role, "connection": connection,
        "replication": "Established" if connection == "Connected" else "Off",
        "disk": disk, "peer_disk": peer_disk, "minor": 0, "volume": 0, "suspended": "no",
        "standalone": standalone, "split_brain": split_brain,
        "connected": connection == "Connected", "syncing": False,
        "up_to_date": disk == "UpToDate" and peer_disk == "UpToDate",
    }




class LibvirtDomain:
    """A libvirt domain; its actions are logged on the host."""

    def __init__(self, host, name, xml):
        self.host, self._name, self.xml = host, name, xml
        self.active = False
        self.uuid = f"6f0c9e4e-0000-4000-8000-{len(host.domains) + 1:012d}"
        # isActive answers True this many times after a shutdown; None: the guest never stops
        self.polls_after_shutdown = 0
        self.shutdown_requested = False
        self.fail_create = None
        self.device_updates = []

    def name(self):
        return self._name

    def isActive(self):  # noqa: N802 - libvirt's name
        if self.active and self.shutdown_requested and self.polls_after_shutdown is not None:
            if self.polls_after_shutdown == 0:
                self.active = False
            else:
                self.polls_after_shutdown -= 1
        return self.active

    def _act(self, what):
        self.host.log.append((f"virsh.{what}", (self._name,), {}))

    def create(self):
        self._act("start")
        if self.fail_create:
            raise libvirt.libvirtError(self.fail_create)
        self.active, self.shutdown_requested = True, False
        return 0

    def destroy(self):
        self._act("destroy")
        self.active = False
        return 0

    def shutdown(self):
        self._act("shutdown")
        self.shutdown_requested = True
        return 0

    def undefine(self):
        self._act("undefine")
        del self.host.domains[self._name]
        return 0

    def UUIDString(self):  # noqa: N802 - libvirt's name
        return self.uuid

    def XMLDesc(self, flags=0):  # noqa: N802 - libvirt's name
        return self.xml

    def updateDeviceFlags(self, xml, flags):  # noqa: N802 - libvirt's name
        self._act("update_device")
        self.device_updates.append((xml, flags))
        return 0


class FakeConn:
    def __init__(self, host):
        self.host = host
        self.list_queries = 0
        self.fail_start = set()

    def lookupByName(self, name):  # noqa: N802 - libvirt's name
        try:
            return self.host.domains[name]
        except KeyError:
            raise libvirt.libvirtError(f"Domain not found: no domain with matching name '{name}'") from None

    def listAllDomains(self, flags=0):  # noqa: N802 - libvirt's name
        self.list_queries += 1
        doms = list(self.host.domains.values())
        if flags & libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE:
            doms = [d for d in doms if d.active]
        return doms

    def defineXML(self, xml):  # noqa: N802 - libvirt's name
        name = ET.fromstring(xml).findtext("name")
        self.host.log.append(("virsh.define", (name,), {}))
        self.host.defined.append(xml)
        dom = self.host.domains.get(name) or LibvirtDomain(self.host, name, xml)
        dom.xml = xml
        if name in self.fail_start:
            dom.fail_create = f"internal error: process exited while connecting to monitor ({name})"
        self.host.domains[name] = dom
        return dom

    def close(self):
        return 0


class Host:
    """One pair host as pairvm sees it: a fake runtime behind __salt__ and libvirt.open."""

    def __init__(self, me, tmp_path, monkeypatch, loader_mock):
        self.me = me
        self.pillar = copy.deepcopy(PILLAR)
        for const, directory in LAYOUT_DIRS.items():
            monkeypatch.setattr(layout, const, str(tmp_path / directory))
        self.machines = tmp_path / "machines"
        self.drbd_dir = tmp_path / "drbd.d"
        self.lock_dir = tmp_path / "lock"
        self.suppress_dir = tmp_path / "suppressed"
        self.serial_dir = tmp_path / "serial"
        for path in (self.machines, self.drbd_dir, self.serial_dir):
            path.mkdir()
        self.root = tmp_path
        self.lvs, self.drbd, self.domains = {}, {}, {}
        self.log, self.defined, self.failures = [], [], {}
        self.md_overhead = 0  # bytes DRBD's internal metadata takes from the end of the LV
        self.drbd_backing = {}  # resource: LV size (MiB) DRBD last sized its device from (up, resize)
        self.conn = FakeConn(self)
        self.opened = mock.Mock(return_value=self.conn)
        monkeypatch.setattr(libvirt, "open", self.opened)
        self.frames = []
        monkeypatch.setattr(MODULES["pairvm"], "_send_frame", self._send_frame)
        self.snapshot_of = {}  # "vg/snapshot": origin LV name
        self.drbd_auth = {}  # resource: False when its running config has no peer authentication
        self.drbd_show = ""  # what drbdsetup show prints
        impls = {
            "config.get": self._config_get,
            "lvm.lvdisplay": self._lvdisplay,
            "lvm.lvcreate": self._lvcreate,
            "lvm.lvremove": self._lvremove,
            "lvm.lvextend": self._lvextend,
            "drbd.status": self._drbd_status,
            "drbd.create_md": self._drbd_create_md,
            "drbd.up": self._drbd_up,
            "drbd.down": self._drbd_down,
            "drbd.primary": self._drbd_primary,
            "drbd.secondary": self._drbd_secondary,
            "drbd.resize": self._drbd_resize,
            "drbd.connect": self._drbd_connect,
            "drbd.adjust": self._drbd_adjust,
            "drbd.peer_auth": lambda: {name: self.drbd_auth.get(name, True) for name in self.drbd},
            "drbd.check_config": lambda path, node=None: "",
            "drbd.show": lambda name: self.drbd_show,
            "cmd.run_all": self._run_all,
        }
        self.salt = {key: mock.Mock(side_effect=self._logged(key, impl)) for key, impl in impls.items()}
        self.opts = {}
        for module in MODULES.values():
            loader_mock(module, salt=self.salt, grains={"id": me}, opts=self.opts)
            module.__pillar__ = self.pillar
        self.new_job()
        pair = self.pillar["pairvm"]["pair"]
        peer = next((h for h in pair if h != me), None) if me in pair else None
        self.write_view({
            "me": me, "peer": peer, "here_ip": pair.get(me, {}).get("admin_ip"),
            "there_ip": pair.get(peer, {}).get("admin_ip"), "bridge": "br0", "memory_cap": 4096,
            "domain_type": "qemu", "volume_groups": ["here", "there"],
        })

    # --- test helpers ---------------------------------------------------------------------

    def new_job(self):
        """A new Salt job: the modules' (shared) __context__ starts empty again."""
        context = {}
        for module in MODULES.values():
            module.__context__ = context

    @property
    def context(self):
        return MODULES["pairvm"].__context__

    def write_view(self, view):
        """This host's /machines/_global, as the state pairvm.config writes it."""
        (self.machines / "_global").write_text(json.dumps(view, indent=2, sort_keys=True))

    def fail(self, function, exc):
        self.failures[function] = exc

    def define(self, name, **definition):
        """Add VM ``name`` to pillar, allocated by the real allocator."""
        pairvm_pillar = self.pillar["pairvm"]
        pairvm_pillar["vms"][name] = definition
        settings, definitions = schema.settings(pairvm_pillar), schema.vms(pairvm_pillar)
        registry = {"vms": {n: {"definition": None, "alloc": a}
                            for n, a in pairvm_pillar["allocations"].items()}}
        registry = alloc.allocate(settings, definitions, registry)
        pairvm_pillar["allocations"] = {n: e["alloc"] for n, e in registry["vms"].items()}

    def record(self, name):
        pairvm_pillar = self.pillar["pairvm"]
        definitions = schema.vms(pairvm_pillar)
        return schema.record(name, definitions[name], pairvm_pillar["allocations"][name],
                             schema.settings(pairvm_pillar))

    def install(self, name, lv=True, drbd=None, domain=None):
        """VM ``name`` as pairvm.create leaves it here, with DRBD and libvirt in a given state."""
        rec = self.record(name)
        (self.machines / name).write_text(schema.dump_record(rec))
        (self.drbd_dir / f"{name}.res").write_text(render.drbd_resource(rec, DRBD_OPTIONS))
        if lv:
            self.lvs[f"{rec['hosts'][self.me]['vg']}/{name}"] = rec["disc_mib"]
        if drbd is not None:
            self.drbd[name] = drbd
            self.drbd_backing[name] = rec["disc_mib"]
        if domain is not None:
            dom = LibvirtDomain(self, name, render.domain_xml(rec, str(self.serial_dir)))
            dom.active = domain == "running"
            self.domains[name] = dom
        return rec

    def lv_device(self, lv, mib, data=b""):
        """The block device of LV ``lv``: a sparse file of ``mib`` MiB starting with ``data``."""
        path = self.root / "dev" / lv
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            fh.truncate(mib * 2**20)
            fh.write(data)
        return path

    def actions(self):
        """What was done to the host, in order: ``drbd.up``, ``virsh.start``, ``garp``, ..."""
        done = []
        for function, args, _ in self.log:
            if function == "cmd.run_all":
                function = args[0][0]
            if function in MUTATING:
                done.append(function)
        return done

    def calls(self, function):
        return [(args, kwargs) for name, args, kwargs in self.log if name == function]

    def snapshot(self):
        """Every file pairvm may write (lock files and LV devices aside), with its content."""
        return {
            str(path): path.read_bytes()
            for path in sorted(self.root.rglob("*"))
            if path.is_file() and self.lock_dir not in path.parents and self.root / "dev" not in path.parents
        }

    # --- the fake runtime -----------------------------------------------------------------

    def _logged(self, function, impl):
        def call(*args, **kwargs):
            self.log.append((function, args, kwargs))
            if function in self.failures:
                raise self.failures[function]
            return impl(*args, **kwargs)

        return call

    def _config_get(self, key, default=None):
        node = self.pillar
        for part in key.split(":"):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def _lvdisplay(self, lvname=None, quiet=False):
        return {f"/dev/{lv}": {"Logical Volume Name": f"/dev/{lv}", "Volume Group Name": lv.split("/")[0],
                               "Logical Volume Size": str(mib * 2048)}
                for lv, mib in self.lvs.items()}

    def _lvcreate(self, lvname, vgname, size=None, snapshot=None, extents=None, **kwargs):
        if f"{vgname}/{lvname}" in self.lvs:
            return {"Output from lvcreate": f'Logical Volume "{lvname}" already exists in volume group'}
        if extents is not None:  # "20%ORIGIN"
            mib = self.lvs[f"{vgname}/{snapshot}"] * int(extents.split("%")[0]) // 100
        else:
            assert size.endswith("M")
            mib = int(size[:-1])
        self.lvs[f"{vgname}/{lvname}"] = mib
        self.lv_device(f"{vgname}/{lvname}", mib)
        if snapshot is not None:
            self.snapshot_of[f"{vgname}/{lvname}"] = snapshot
        return {"Output from lvcreate": f'Logical volume "{lvname}" created.'}

    def _lvremove(self, lvname, vgname, force=True):
        self.snapshot_of.pop(f"{vgname}/{lvname}", None)
        (self.root / "dev" / vgname / lvname).unlink(missing_ok=True)
        if self.lvs.pop(f"{vgname}/{lvname}", None) is None:
            return f'Failed to find logical volume "{vgname}/{lvname}"'
        return f'Logical volume "{lvname}" successfully removed'

    def _lvextend(self, size=None, lvpath=None, **kwargs):
        lv = lvpath[len("/dev/"):]
        if lv not in self.lvs:
            return {"Output from lvextend": f'Failed to find logical volume "{lv}"'}
        self.lvs[lv] = int(size[:-1])
        return {"Output from lvextend": f'Logical volume "{lvpath}" successfully extended.'}

    def _drbd_status(self, name=None):
        if name is None:
            return copy.deepcopy(self.drbd)
        return copy.deepcopy(self.drbd.get(name, {}))

    def _need_up(self, command, name):
        if name not in self.drbd:
            raise CommandExecutionError(f"'drbdadm {command} {name}' failed with exit code 10: "
                                        f"{name}: not configured")

    def _drbd_create_md(self, name):
        assert (self.drbd_dir / f"{name}.res").exists(), "create-md before the resource file exists"
        assert name not in self.drbd, "create-md on a resource that is up"
        return True

    def _drbd_up(self, name):
        if not (self.drbd_dir / f"{name}.res").exists():
            raise CommandExecutionError(f"'drbdadm up {name}' failed with exit code 10: "
                                        f"no resource defined by that name")
        if name in self.drbd:
            raise CommandExecutionError(f"'drbdadm up {name}' failed with exit code 10: "
                                        f"Device is attached to a disk (use detach first)")
        self.drbd[name] = drbd_state()
        self.drbd_backing[name] = next(mib for lv, mib in self.lvs.items() if lv.split("/")[1] == name)
        return True

    def _drbd_adjust(self, name):
        self._need_up("adjust", name)
        self.drbd_auth.pop(name, None)  # the running resource takes the file (and its secret)
        return True

    def _drbd_down(self, name):
        self.drbd.pop(name, None)
        return True

    def _drbd_primary(self, name, force=False):
        self._need_up("primary", name)
        self.drbd[name]["role"] = "Primary"
        return True

    def _drbd_secondary(self, name):
        self._need_up("secondary", name)
        self.drbd[name]["role"] = "Secondary"
        return True

    def _drbd_resize(self, name):
        self._need_up("resize", name)
        if "Primary" not in (self.drbd[name]["role"], self.drbd[name]["peer_role"]):
            raise CommandExecutionError(f"'drbdadm resize {name}' failed with exit code 11: "
                                        f"State change failed: Need one Primary node to resize")
        self.drbd_backing[name] = next(mib for lv, mib in self.lvs.items() if lv.split("/")[1] == name)
        return True

    def _drbd_connect(self, name, discard_my_data=False):
        self._need_up("connect", name)
        if discard_my_data and self.drbd[name]["role"] == "Primary":
            raise CommandExecutionError(
                f"'drbdadm connect --discard-my-data {name}' failed with exit code 10: "
                f"Failure: (123) --discard-my-data not allowed when primary.")
        self.drbd[name].update(connection="Connecting", standalone=False, split_brain=False)
        return True

    def _send_frame(self, interface, frame):
        self.log.append(("garp", (interface, frame), {}))
        self.frames.append((interface, frame))

    def _run_all(self, argv, **kwargs):
        if argv[:3] == ["lvs", "--reportformat", "json"]:
            rows = [{"lv_name": lv.split("/")[1], "vg_name": lv.split("/")[0],
                     "origin": self.snapshot_of.get(lv, ""), "lv_full_name": lv, "lv_snapshot_invalid": "",
                     "snap_percent": "1.00" if lv in self.snapshot_of else ""}
                    for lv in sorted(self.lvs) if len(argv) == 5 or lv == argv[5]]
            return {"retcode": 0, "stdout": json.dumps({"report": [{"lv": rows}]}), "stderr": ""}
        if argv[0] == "blockdev":
            minor = int(argv[-1][len("/dev/drbd"):])
            for name, allocation in self.pillar["pairvm"]["allocations"].items():
                if allocation["drbd_minor"] == minor and name in self.drbd:
                    size = self.drbd_backing[name] * 2**20 - self.md_overhead
                    return {"retcode": 0, "stdout": str(size), "stderr": ""}
            return {"retcode": 1, "stdout": "", "stderr": f"blockdev: cannot open {argv[-1]}"}
        raise AssertionError(f"unexpected command {argv}")


def drbd_calls(host):
    return [(name, args, kwargs) for name, args, kwargs in host.log if name.startswith("drbd.")
            and name not in ("drbd.status", "drbd.check_config")]
