"""_modules/pairvm.py with Salt's loader mocked: list and check_system."""

import copy
import json
import stat
import xml.etree.ElementTree as ET
from unittest import mock

import libvirt
import libvirt_qemu
import pytest
import yaml

from salt.exceptions import CommandExecutionError
from tests.unit.conftest import FakeClock, load, real_utils

pairvm = load("_modules/pairvm.py", "pairvm_module")

VGS = {"report": [{"vg": [
    {"vg_name": "here", "vg_size": "1020.00m", "vg_free": "1000.00m"},
    {"vg_name": "there", "vg_size": "1020.00m", "vg_free": "1020.00m"},
]}]}


class FakeDomain:
    def __init__(self, name):
        self._name = name

    def name(self):
        return self._name


@pytest.fixture
def machines(tmp_path, monkeypatch):
    monkeypatch.setattr(pairvm, "MACHINES_DIR", str(tmp_path))
    (tmp_path / "_global").write_text("me: hostA\npeer: hostB\nmemory_cap: 4096\n")
    (tmp_path / "vm1").write_text("home: hostA\nmemory: 256\ndisc: 1G\nmac: '52:54:00:00:00:01'\n")
    (tmp_path / "vm2").write_text("home: hostB\nmemory: 512\ndisc: 2G\n")
    return tmp_path


@pytest.fixture
def salt(loader_mock):
    funcs = {
        "config.get": lambda key, default=None: default,
        "cmd.run_all": mock.Mock(return_value={"retcode": 0, "stdout": json.dumps(VGS), "stderr": ""}),
        "drbd.status": mock.Mock(return_value={
            "vm1": {"connection": "Connected", "disk": "UpToDate"},
            "vm2": {"connection": "WFConnection", "disk": "UpToDate"},
        }),
    }
    loader_mock(pairvm, salt=funcs)
    return funcs


@pytest.fixture
def libvirt_running(monkeypatch):
    conn = mock.Mock()
    conn.listAllDomains.return_value = [FakeDomain("vm1")]
    monkeypatch.setattr(pairvm.libvirt, "open", mock.Mock(return_value=conn))
    return conn


def test_list_without_machines_asks_nothing_of_libvirt_or_drbd(salt, tmp_path, monkeypatch):
    monkeypatch.setattr(pairvm, "MACHINES_DIR", str(tmp_path / "absent"))
    with mock.patch.object(pairvm.libvirt, "open") as opened:
        result = pairvm.list_()
    assert result["vms"] == []
    opened.assert_not_called()
    salt["drbd.status"].assert_not_called()


def test_list_merges_config_libvirt_and_drbd_with_one_query_each(salt, machines, libvirt_running):
    result = pairvm.list_()
    assert [r["name"] for r in result["vms"]] == ["vm1", "vm2"]
    vm1, vm2 = result["vms"]
    assert (vm1["running"], vm1["location"], vm1["drbd_connection"]) == (True, "home", "Connected")
    assert (vm2["running"], vm2["location"], vm2["drbd_connection"]) == (False, "away", "WFConnection")
    assert result["memory"] == {"here": 256, "there": 512, "running": 256, "cap": 4096}
    libvirt_running.listAllDomains.assert_called_once()
    salt["drbd.status"].assert_called_once_with()


def test_list_fields_accepts_a_comma_list_and_keeps_name_first(salt, machines, libvirt_running):
    rows = pairvm.list_(fields="ip, memory")["vms"]
    assert list(rows[0]) == ["name", "ip", "memory"]


@pytest.mark.parametrize("fields", ["colour", "", ["ip", "x"]])
def test_list_rejects_unknown_fields_before_querying(salt, machines, fields):
    with mock.patch.object(pairvm.libvirt, "open") as opened:
        with pytest.raises(CommandExecutionError, match="unknown list field"):
            pairvm.list_(fields=fields)
    opened.assert_not_called()


def test_list_names_a_machines_file_that_is_not_a_mapping(salt, machines, libvirt_running):
    (machines / "vm3").write_text("- just\n- a list\n")
    with pytest.raises(CommandExecutionError, match="vm3 is not a mapping"):
        pairvm.list_()


def test_check_system_reports_each_check_and_sets_retcode(salt, monkeypatch, libvirt_running):
    monkeypatch.setattr(pairvm.salt.utils.path, "which", lambda tool: tool != "pv")
    monkeypatch.setattr(pairvm, "_check_bridge", lambda: (True, "bridge br0 is up"))
    libvirt_running.getLibVersion.return_value = 9000000
    report = pairvm.check_system()
    assert report["ok"] is False
    assert report["checks"]["tools"] == {"ok": False, "detail": "missing: pv"}
    assert report["checks"]["volume_groups"]["ok"] is True
    assert report["checks"]["libvirt"]["detail"] == "qemu:///system answers (libvirt 9.0.0)"
    assert pairvm.__context__["retcode"] == 1
    argv = salt["cmd.run_all"].call_args
    assert argv.args[0][0] == "vgs" and argv.kwargs["python_shell"] is False


def test_check_system_names_the_missing_volume_group(salt):
    only_here = {"report": [{"vg": VGS["report"][0]["vg"][:1]}]}
    salt["cmd.run_all"].return_value = {"retcode": 0, "stdout": json.dumps(only_here), "stderr": ""}
    assert pairvm._check_volume_groups() == (False, "missing volume group(s): there")


def test_virtual_explains_a_missing_libvirt_binding(monkeypatch):
    monkeypatch.setattr(pairvm, "HAS_LIBVIRT", False)
    ok, why = pairvm.__virtual__()
    assert ok is False and "libvirt-python" in why


# ---------------------------------------------------------------------------------------------
# The mutating functions, against a fake host: LVM, DRBD and libvirt behind Salt's dunders,
# the real pairvm utils, /machines, /etc/drbd.d and friends redirected into tmp_path.
# ---------------------------------------------------------------------------------------------

schema = load("_utils/pairvm_schema.py", "pairvm_schema")
alloc = load("_utils/pairvm_alloc.py", "pairvm_alloc")
render = load("_utils/pairvm_render.py", "pairvm_render")

DRBD_OPTIONS = {"c_plan_ahead": 0, "resync_rate": "100M", "connect_int": 2}
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
               peer_disk="UpToDate"):
    """One resource as drbd.status reports it."""
    standalone = connection == "StandAlone"
    return {
        "role": role, "peer_role": peer_role, "connection": connection,
        "replication": "Established" if connection == "Connected" else connection,
        "disk": disk, "peer_disk": peer_disk, "minor": 0, "volume": 0, "suspended": "no",
        "standalone": standalone, "split_brain": standalone and disk not in (None, "Diskless"),
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
        self.machines = tmp_path / "machines"
        self.drbd_dir = tmp_path / "drbd.d"
        self.lock_dir = tmp_path / "lock"
        self.suppress_dir = tmp_path / "suppressed"
        self.serial_dir = tmp_path / "serial"
        for path in (self.machines, self.drbd_dir, self.serial_dir):
            path.mkdir()
        for const, path in (("MACHINES_DIR", self.machines), ("DRBD_DIR", self.drbd_dir),
                            ("LOCK_DIR", self.lock_dir), ("SUPPRESS_DIR", self.suppress_dir),
                            ("SERIAL_LOG_DIR", self.serial_dir)):
            monkeypatch.setattr(pairvm, const, str(path))
        self.root = tmp_path
        self.lvs, self.drbd, self.domains = {}, {}, {}
        self.log, self.defined, self.failures = [], [], {}
        self.md_overhead = 0  # bytes DRBD's internal metadata takes from the end of the LV
        self.drbd_backing = {}  # resource: LV size (MiB) DRBD last sized its device from (up, resize)
        self.conn = FakeConn(self)
        self.opened = mock.Mock(return_value=self.conn)
        monkeypatch.setattr(pairvm.libvirt, "open", self.opened)
        self.frames = []
        monkeypatch.setattr(pairvm, "_send_frame", self._send_frame)
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
            "drbd.check_config": lambda path, node=None: "",
            "cmd.run_all": self._run_all,
        }
        self.salt = {key: mock.Mock(side_effect=self._logged(key, impl)) for key, impl in impls.items()}
        loader_mock(pairvm, salt=self.salt, grains={"id": me}, opts={})
        pairvm.__pillar__ = self.pillar
        pairvm.__utils__ = real_utils()
        pair = self.pillar["pairvm"]["pair"]
        peer = next((h for h in pair if h != me), None) if me in pair else None
        (self.machines / "_global").write_text(yaml.safe_dump({
            "me": me, "peer": peer, "here_ip": pair.get(me, {}).get("admin_ip"),
            "there_ip": pair.get(peer, {}).get("admin_ip"), "bridge": "br0", "memory_cap": 4096,
            "domain_type": "qemu",
        }))

    # --- test helpers ---------------------------------------------------------------------

    def new_job(self):
        """A new Salt job: the module's __context__ starts empty again."""
        pairvm.__context__ = {}

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
        """Every file pairvm may write (lock files aside), with its content."""
        return {
            str(path): path.read_bytes()
            for path in sorted(self.root.rglob("*"))
            if path.is_file() and self.lock_dir not in path.parents
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

    def _lvcreate(self, lvname, vgname, size=None, **kwargs):
        if f"{vgname}/{lvname}" in self.lvs:
            return {"Output from lvcreate": f'Logical Volume "{lvname}" already exists in volume group'}
        assert size.endswith("M")
        self.lvs[f"{vgname}/{lvname}"] = int(size[:-1])
        return {"Output from lvcreate": f'Logical volume "{lvname}" created.'}

    def _lvremove(self, lvname, vgname, force=True):
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
        if argv[0] == "blockdev":
            minor = int(argv[-1][len("/dev/drbd"):])
            for name, allocation in self.pillar["pairvm"]["allocations"].items():
                if allocation["drbd_minor"] == minor and name in self.drbd:
                    size = self.drbd_backing[name] * 2**20 - self.md_overhead
                    return {"retcode": 0, "stdout": str(size), "stderr": ""}
            return {"retcode": 1, "stdout": "", "stderr": f"blockdev: cannot open {argv[-1]}"}
        raise AssertionError(f"unexpected command {argv}")


@pytest.fixture
def host(tmp_path, monkeypatch, loader_mock):
    """hostA, the home of vm1 and the peer of vm2."""
    return Host("hostA", tmp_path, monkeypatch, loader_mock)


@pytest.fixture
def peer(tmp_path, monkeypatch, loader_mock):
    """hostB, the peer of vm1."""
    return Host("hostB", tmp_path, monkeypatch, loader_mock)


def drbd_calls(host):
    return [(name, args, kwargs) for name, args, kwargs in host.log if name.startswith("drbd.")
            and name not in ("drbd.status", "drbd.check_config")]


# --- names are checked before anything else -----------------------------------------------------

NAMED_CALLS = {
    "create": lambda n: pairvm.create(n),
    "create_test": lambda n: pairvm.create(n, test=True),
    "destroy": lambda n: pairvm.destroy(n, confirm=True, force=True),
    "start": lambda n: pairvm.start(n, away=True, disconnected=True),
    "stop": lambda n: pairvm.stop(n),
    "resize": lambda n: pairvm.resize(n, "2G"),
    "cdrom": lambda n: pairvm.cdrom(n, eject=True),
    "serial": lambda n: pairvm.serial(n),
    "suppress": lambda n: pairvm.suppress(n),
    "monitor": lambda n: pairvm.monitor(n, "info status"),
    "pillar_record": lambda n: pairvm.pillar_record(n),
}


@pytest.mark.parametrize("bad", BAD_NAMES)
@pytest.mark.parametrize("function", sorted(NAMED_CALLS))
def test_invalid_names_are_refused_before_anything_runs(host, function, bad):
    (host.machines / "all").write_text("a file that must not be read\n")
    before = host.snapshot()
    with pytest.raises(CommandExecutionError, match="must be|reserved"):
        NAMED_CALLS[function](bad)
    assert host.log == []
    host.opened.assert_not_called()
    assert host.snapshot() == before


# --- pillar_record ------------------------------------------------------------------------------


def test_pillar_record_is_the_resolved_record_of_the_data_model(host):
    record = pairvm.pillar_record("vm1")
    assert record["hosts"] == {
        "hostA": {"admin_ip": "10.77.0.11", "replication_ip": "10.78.0.11", "vg": "here"},
        "hostB": {"admin_ip": "10.77.0.12", "replication_ip": "10.78.0.12", "vg": "there"},
    }
    assert (record["peer"], record["disc_mib"], record["ip"], record["prefix"], record["gateway"]) == (
        "hostB", 1024, "10.79.0.5", 24, "10.79.0.1")
    assert (record["drbd_port"], record["drbd_minor"], record["vnc_display"]) == (7800, 0, 1)
    assert (record["domain_type"], record["state"], record["suppress"]) == ("qemu", "running", False)


# --- create -------------------------------------------------------------------------------------


def test_create_with_test_lists_the_exact_commands_and_changes_nothing(host):
    before = host.snapshot()
    ret = pairvm.create("vm1", test=True)
    assert ret["changes"] == [
        "lvcreate -n vm1 here -L 1024M",
        f"write {host.drbd_dir}/global_common.conf",
        f"write {host.drbd_dir}/vm1.res",
        "drbdadm create-md --force vm1",
        "drbdadm up vm1",
        "drbdadm primary --force vm1",
        "drbdadm secondary vm1",
        f"write {host.machines}/vm1",
    ]
    assert ret["comment"].startswith("would")
    assert host.actions() == []
    host.salt["drbd.check_config"].assert_not_called()
    assert host.snapshot() == before
    assert host.lvs == {} and host.drbd == {}


def test_create_on_the_home_host_builds_storage_config_and_makes_it_the_sync_source(host):
    ret = pairvm.create("vm1")
    record = host.record("vm1")
    # force=True (--yes): a new LV may start with a removed one's signatures; wipe them
    host.salt["lvm.lvcreate"].assert_called_once_with("vm1", "here", size="1024M", force=True)
    assert host.lvs == {"here/vm1": 1024}
    res = host.drbd_dir / "vm1.res"
    assert stat.S_IMODE(res.stat().st_mode) == 0o600
    assert res.read_text() == render.drbd_resource(record, DRBD_OPTIONS)
    assert 'on "hostA"' in res.read_text() and "disk /dev/here/vm1;" in res.read_text()
    assert "address 10.78.0.12:7800;" in res.read_text() and "disk /dev/there/vm1;" in res.read_text()
    assert (host.drbd_dir / "global_common.conf").read_text() == render.drbd_global_common(DRBD_OPTIONS)
    machine = host.machines / "vm1"
    assert machine.read_text() == schema.dump_record(record)
    assert schema.load_record(machine.read_text(), strict=True)["hosts"]["hostA"]["vg"] == "here"
    assert drbd_calls(host) == [
        ("drbd.create_md", ("vm1",), {}),
        ("drbd.up", ("vm1",), {}),
        ("drbd.primary", ("vm1",), {"force": True}),
        ("drbd.secondary", ("vm1",), {}),
    ]
    assert host.actions()[0] == "lvm.lvcreate"
    assert host.drbd["vm1"]["role"] == "Secondary"
    assert len(ret["changes"]) == 8 and not ret["comment"].startswith("would")


def test_create_on_the_peer_uses_the_replica_vg_and_never_promotes(peer):
    pairvm.create("vm1")
    peer.salt["lvm.lvcreate"].assert_called_once_with("vm1", "there", size="1024M", force=True)
    assert [n for n, _, _ in drbd_calls(peer)] == ["drbd.create_md", "drbd.up"]
    peer.salt["drbd.primary"].assert_not_called()
    assert schema.load_record((peer.machines / "vm1").read_text()) == peer.record("vm1")
    # both hosts render the same resource file
    assert (peer.drbd_dir / "vm1.res").read_text() == render.drbd_resource(peer.record("vm1"), DRBD_OPTIONS)


def test_create_run_again_changes_nothing(host):
    pairvm.create("vm1")
    done = len(host.log)
    before = host.snapshot()
    host.new_job()
    ret = pairvm.create("vm1")
    assert ret["changes"] == []
    assert [n for n, _, _ in host.log[done:] if n in MUTATING] == []
    assert host.snapshot() == before
    host.new_job()
    assert pairvm.create("vm1", test=True)["changes"] == []


def test_create_on_an_existing_lv_never_wipes_or_force_promotes_it(host):
    """After a reboot (LV there, DRBD down) create only brings the resource up."""
    host.install("vm1", drbd=None)
    (host.drbd_dir / "global_common.conf").write_text(render.drbd_global_common(DRBD_OPTIONS))
    ret = pairvm.create("vm1")
    assert ret["changes"] == ["drbdadm up vm1"]
    assert host.actions() == ["drbd.up"]


def test_create_rewrites_a_machines_file_that_pillar_changed(host):
    host.install("vm1", drbd=drbd_state())
    (host.drbd_dir / "global_common.conf").write_text(render.drbd_global_common(DRBD_OPTIONS))
    host.pillar["pairvm"]["vms"]["vm1"]["memory"] = 384
    ret = pairvm.create("vm1")
    assert ret["changes"] == [f"write {host.machines}/vm1"]
    assert schema.load_record((host.machines / "vm1").read_text())["memory"] == 384
    assert host.actions() == []


def test_create_failing_midway_undoes_what_it_created(host):
    host.fail("drbd.up", CommandExecutionError("'drbdadm up vm1' failed with exit code 10: boom"))
    with pytest.raises(CommandExecutionError, match="drbdadm up vm1"):
        pairvm.create("vm1")
    host.salt["lvm.lvremove"].assert_called_once_with("vm1", "here")
    assert host.lvs == {}
    assert not (host.drbd_dir / "vm1.res").exists()
    assert not (host.machines / "vm1").exists()
    host.salt["drbd.primary"].assert_not_called()
    # nothing half-done is left: the same command finishes once the cause is gone
    del host.failures["drbd.up"]
    host.new_job()
    assert "lvcreate -n vm1 here -L 1024M" in pairvm.create("vm1")["changes"]
    assert host.lvs == {"here/vm1": 1024} and host.drbd["vm1"]["role"] == "Secondary"


def test_create_rejected_by_drbdadm_leaves_no_resource_file(host):
    host.fail("drbd.check_config", CommandExecutionError("drbd.d/vm1.res:3: Parse error"))
    with pytest.raises(CommandExecutionError, match="drbdadm rejected the resource file of vm1"):
        pairvm.create("vm1")
    assert not (host.drbd_dir / "vm1.res").exists()
    assert not list(host.drbd_dir.glob("*.pairvm-tmp"))
    host.salt["drbd.up"].assert_not_called()
    host.salt["drbd.create_md"].assert_not_called()
    assert host.lvs == {}
    assert not (host.machines / "vm1").exists()


def test_create_rejected_by_drbdadm_keeps_the_previous_resource_file(host):
    host.install("vm1", drbd=drbd_state(role="Primary"), domain="running")
    old = (host.drbd_dir / "vm1.res").read_text()
    host.pillar["pairvm"]["drbd_options"] = {**DRBD_OPTIONS, "resync_rate": "200M"}
    host.fail("drbd.check_config", CommandExecutionError("drbd.d/vm1.res:9: Parse error"))
    with pytest.raises(CommandExecutionError, match="drbdadm rejected the resource file of vm1"):
        pairvm.create("vm1")
    assert (host.drbd_dir / "vm1.res").exists()
    assert (host.drbd_dir / "vm1.res").read_text() == old


def test_create_refuses_an_lv_smaller_than_the_disc(host):
    host.lvs["here/vm1"] = 512
    before = host.snapshot()
    with pytest.raises(CommandExecutionError,
                       match=r"here/vm1 is 512 MiB.*1024 MiB.*grow it with pairvm.resize"):
        pairvm.create("vm1")
    assert host.actions() == []
    assert host.snapshot() == before
    assert host.lvs == {"here/vm1": 512}


@pytest.mark.parametrize("change, message", [
    (lambda p: p["vms"].pop("vm1"), "VM vm1 is not defined in pillar pairvm:vms"),
    (lambda p: p["allocations"].pop("vm1"), r"no allocation yet.*salt-run pairvm.allocate"),
    (lambda p: p["vms"]["vm1"].__setitem__("memory", "lots"), r"vm 'vm1': memory"),
    (lambda p: p.pop("pair"), "pair: must map exactly two minion ids"),
])
def test_create_refuses_what_pillar_does_not_define_clearly(host, change, message):
    change(host.pillar["pairvm"])
    with pytest.raises(CommandExecutionError, match=message):
        pairvm.create("vm1")
    assert host.log == []
    host.opened.assert_not_called()
    assert not (host.machines / "vm1").exists()


def test_create_refuses_a_host_outside_the_pair(tmp_path, monkeypatch, loader_mock):
    outsider = Host("hostC", tmp_path, monkeypatch, loader_mock)
    with pytest.raises(CommandExecutionError, match=r"this host \(hostC\) is not one of VM vm1's pair"):
        pairvm.create("vm1")
    assert outsider.actions() == []


def test_create_names_the_pillar_render_error(host):
    host.pillar.clear()
    host.pillar["_errors"] = ["Rendering SLS 'base:pairvm' failed: mapping values are not allowed here"]
    with pytest.raises(CommandExecutionError, match="Rendering SLS 'base:pairvm' failed"):
        pairvm.create("vm1")


# --- destroy ------------------------------------------------------------------------------------


@pytest.mark.parametrize("confirm", [False, "yes", 1, None])
def test_destroy_needs_confirm_true(host, confirm):
    host.install("vm1", drbd=drbd_state(), domain="running")
    before = host.snapshot()
    with pytest.raises(CommandExecutionError, match=r"deletes its disc.*confirm=True"):
        pairvm.destroy("vm1", confirm=confirm, force=True)
    assert host.log == []
    host.opened.assert_not_called()
    assert host.snapshot() == before and host.domains["vm1"].active


def test_destroy_refuses_a_running_vm_without_force(host):
    host.install("vm1", drbd=drbd_state(role="Primary"), domain="running")
    before = host.snapshot()
    with pytest.raises(CommandExecutionError, match="vm1 is running here: stop it first, or force=True"):
        pairvm.destroy("vm1", confirm=True)
    assert host.actions() == []
    assert host.snapshot() == before
    assert host.domains["vm1"].active and host.lvs == {"here/vm1": 1024} and "vm1" in host.drbd


def destroy_changes(host):
    return [
        "virsh destroy vm1", "virsh undefine vm1", "drbdadm down vm1", f"rm {host.drbd_dir}/vm1.res",
        "lvremove here/vm1", f"rm {host.machines}/vm1", f"rm {host.suppress_dir}/vm1",
    ]


def test_destroy_with_force_removes_everything_in_order(host):
    host.install("vm1", drbd=drbd_state(role="Primary"), domain="running")
    host.install("vm2", drbd=drbd_state())
    host.lvs["data/vm1"] = 100  # not a pairvm VG: never touched
    host.suppress_dir.mkdir()
    (host.suppress_dir / "vm1").write_text("suppressed\n")
    ret = pairvm.destroy("vm1", confirm=True, force=True)
    assert ret["changes"] == destroy_changes(host)
    assert host.actions() == ["virsh.destroy", "virsh.undefine", "drbd.down", "lvm.lvremove"]
    host.salt["lvm.lvremove"].assert_called_once_with("vm1", "here")
    assert "vm1" not in host.domains and "vm1" not in host.drbd
    assert host.lvs == {"data/vm1": 100, "there/vm2": 2048}
    assert not (host.drbd_dir / "vm1.res").exists() and not (host.machines / "vm1").exists()
    assert not (host.suppress_dir / "vm1").exists()
    assert (host.machines / "vm2").exists() and (host.drbd_dir / "vm2.res").exists()
    host.new_job()
    assert pairvm.destroy("vm1", confirm=True)["changes"] == []


def test_destroy_with_test_lists_without_acting(host):
    host.install("vm1", drbd=drbd_state(role="Primary"), domain="running")
    host.suppress_dir.mkdir()
    (host.suppress_dir / "vm1").write_text("suppressed\n")
    before = host.snapshot()
    ret = pairvm.destroy("vm1", confirm=True, force=True, test=True)
    assert ret["changes"] == destroy_changes(host)
    assert ret["comment"].startswith("would")
    assert host.actions() == []
    assert host.snapshot() == before and host.domains["vm1"].active and host.lvs == {"here/vm1": 1024}


def test_destroy_of_a_stopped_vm_on_the_peer_removes_the_replica(peer):
    peer.install("vm1", drbd=drbd_state(), domain="defined")
    pairvm.destroy("vm1", confirm=True)
    peer.salt["lvm.lvremove"].assert_called_once_with("vm1", "there")
    assert peer.actions() == ["virsh.undefine", "drbd.down", "lvm.lvremove"]


# --- start --------------------------------------------------------------------------------------


def test_start_promotes_defines_starts_and_announces(host):
    host.install("vm1", drbd=drbd_state())
    ret = pairvm.start("vm1")
    assert host.actions() == ["drbd.primary", "virsh.define", "virsh.start", "garp"]
    host.salt["drbd.primary"].assert_called_once_with("vm1")
    assert host.domains["vm1"].active and host.drbd["vm1"]["role"] == "Primary"
    root = ET.fromstring(host.defined[-1])
    assert root.findtext("name") == "vm1" and root.get("type") == "qemu"
    assert root.find("devices/disk[@device='disk']/source").get("dev") == "/dev/drbd0"
    graphics = root.find("devices/graphics[@type='vnc']")
    assert (graphics.get("listen"), graphics.get("port")) == ("127.0.0.1", "5901")
    assert {e.get("address") for e in graphics.iter("listen")} <= {"127.0.0.1"}
    assert root.findtext("on_reboot") == "destroy"
    assert root.find("devices/interface/target").get("dev") == "vm-vm1"
    assert root.find("devices/interface/source").get("bridge") == "br0"
    assert root.find("devices/serial/log").get("file") == f"{host.serial_dir}/vm1-serial.log"
    interface, frame = host.frames[-1]
    mac = bytes.fromhex("525400000001")  # vm1's allocated MAC
    ip = bytes([10, 79, 0, 5])
    assert interface == "br0"
    assert frame[:14] == b"\xff" * 6 + mac + b"\x08\x06"  # broadcast, from the VM's MAC, ARP
    assert frame[14:22] == bytes.fromhex("0001080006040001")  # Ethernet/IPv4 request
    assert frame[22:] == mac + ip + bytes(6) + ip  # sender IP == target IP: gratuitous
    assert ret["changes"][-1].startswith("gratuitous ARP for 10.79.0.5 (")


def test_start_redefines_a_defined_domain_keeping_its_uuid(host):
    host.install("vm1", drbd=drbd_state(role="Primary"), domain="defined")
    uuid = host.domains["vm1"].uuid
    pairvm.start("vm1")
    assert host.actions() == ["virsh.define", "virsh.start", "garp"]  # already Primary: no promote
    assert ET.fromstring(host.defined[-1]).findtext("uuid") == uuid


def test_start_with_test_lists_without_acting(host):
    host.install("vm1", drbd=drbd_state())
    before = host.snapshot()
    ret = pairvm.start("vm1", test=True)
    assert ret["changes"] == ["drbdadm primary vm1", "virsh define <domain vm1> && virsh start vm1",
                              ret["changes"][-1]]
    assert ret["changes"][-1].startswith("gratuitous ARP for 10.79.0.5")
    assert host.actions() == [] and host.snapshot() == before and host.defined == []


def test_start_of_a_running_vm_changes_nothing(host):
    host.install("vm1", drbd=drbd_state(role="Primary"), domain="running")
    ret = pairvm.start("vm1")
    assert ret["changes"] == []
    assert host.actions() == []


def test_start_on_the_away_host_needs_away(peer):
    peer.install("vm1", drbd=drbd_state())
    with pytest.raises(CommandExecutionError, match="vm1's home is hostA, not hostB: pass away=True"):
        pairvm.start("vm1")
    assert peer.actions() == []
    peer.new_job()
    pairvm.start("vm1", away=True)
    assert peer.domains["vm1"].active
    assert ET.fromstring(peer.defined[-1]).find("devices/disk/source").get("dev") == "/dev/drbd0"


@pytest.mark.parametrize("state, message", [
    (None, "DRBD resource vm1 is not up on hostA"),
    (drbd_state(connection="StandAlone", peer_role="Unknown", peer_disk="DUnknown"),
     r"split brain.*`pairvm split_brain_victim vm1`"),
    (drbd_state(peer_role="Primary"), "vm1's disc is Primary on the peer: stop it there first"),
    (drbd_state(disk="Inconsistent", peer_disk="UpToDate"), "disc on hostA is Inconsistent, not UpToDate"),
    (drbd_state(disk="Outdated", connection="Connecting", peer_role="Unknown"), "not UpToDate"),
    (drbd_state(connection="Connecting", peer_role="Unknown", peer_disk="DUnknown"),
     r"vm1 is Connecting, not Connected.*disconnected=True"),
])
def test_start_refuses_an_unsafe_drbd_state(host, state, message):
    host.install("vm1", drbd=state)
    with pytest.raises(CommandExecutionError, match=message):
        pairvm.start("vm1")
    assert host.actions() == [] and host.defined == []


@pytest.mark.parametrize("state", [
    None,
    drbd_state(connection="StandAlone", peer_role="Unknown", peer_disk="DUnknown"),
    drbd_state(disk="Outdated", connection="Connecting", peer_role="Unknown"),
])
def test_start_disconnected_does_not_override_the_other_checks(host, state):
    host.install("vm1", drbd=state)
    with pytest.raises(CommandExecutionError):
        pairvm.start("vm1", disconnected=True)
    assert host.actions() == []


def test_start_disconnected_runs_a_vm_whose_peer_is_unreachable(host):
    host.install("vm1", drbd=drbd_state(connection="Connecting", peer_role="Unknown", peer_disk="DUnknown"))
    pairvm.start("vm1", disconnected=True)
    assert host.actions() == ["drbd.primary", "virsh.define", "virsh.start", "garp"]


# --- stop ---------------------------------------------------------------------------------------


def test_stop_powers_off_then_demotes(host):
    host.install("vm1", drbd=drbd_state(role="Primary"), domain="running")
    ret = pairvm.stop("vm1")
    assert host.actions() == ["virsh.destroy", "drbd.secondary"]
    assert ret["changes"] == ["virsh destroy vm1", "drbdadm secondary vm1"]
    assert not host.domains["vm1"].active and host.drbd["vm1"]["role"] == "Secondary"


def test_stop_of_a_stopped_vm_changes_nothing(host):
    host.install("vm1", drbd=drbd_state(), domain="defined")
    assert pairvm.stop("vm1")["changes"] == []
    assert host.actions() == []


def test_stop_demotes_a_primary_left_without_a_vm(host):
    host.install("vm1", drbd=drbd_state(role="Primary"))
    assert pairvm.stop("vm1")["changes"] == ["drbdadm secondary vm1"]
    assert host.actions() == ["drbd.secondary"]


def test_stop_with_test_lists_without_acting(host):
    host.install("vm1", drbd=drbd_state(role="Primary"), domain="running")
    ret = pairvm.stop("vm1", graceful=True, timeout=5, test=True)
    assert ret["changes"] == ["virsh shutdown vm1 (wait 5s)", "drbdadm secondary vm1"]
    assert host.actions() == [] and host.domains["vm1"].active


def test_stop_graceful_waits_for_the_guest(host, monkeypatch):
    monkeypatch.setattr(pairvm, "time", FakeClock())
    host.install("vm1", drbd=drbd_state(role="Primary"), domain="running")
    host.domains["vm1"].polls_after_shutdown = 3
    pairvm.stop("vm1", graceful=True, timeout=10)
    assert host.actions() == ["virsh.shutdown", "drbd.secondary"]
    assert not host.domains["vm1"].active


def test_stop_graceful_fails_when_the_guest_does_not_stop_and_keeps_it_primary(host, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(pairvm, "time", clock)
    host.install("vm1", drbd=drbd_state(role="Primary"), domain="running")
    host.domains["vm1"].polls_after_shutdown = None
    with pytest.raises(CommandExecutionError, match=r"vm1 did not shut down within 0.2s.*without graceful"):
        pairvm.stop("vm1", graceful=True, timeout=0.2)
    assert host.actions() == ["virsh.shutdown"]
    assert host.domains["vm1"].active and host.drbd["vm1"]["role"] == "Primary"
    assert clock.now - 1000.0 < 5


# --- resize -------------------------------------------------------------------------------------


def test_resize_refuses_to_shrink(host):
    host.install("vm1", drbd=drbd_state())
    with pytest.raises(CommandExecutionError, match=r"1024 MiB.*512 MiB.*only grows"):
        pairvm.resize("vm1", "512M")
    assert host.actions() == [] and host.lvs == {"here/vm1": 1024}


def test_resize_of_a_missing_lv_is_refused(host):
    host.install("vm1", lv=False, drbd=drbd_state())
    with pytest.raises(CommandExecutionError, match="LV here/vm1 does not exist on hostA"):
        pairvm.resize("vm1", "2G")
    assert host.actions() == []


@pytest.mark.parametrize("size", ["12X", "-5G", "1.5M", True])
def test_resize_refuses_a_bad_size(host, size):
    host.install("vm1", drbd=drbd_state())
    with pytest.raises(CommandExecutionError, match="size"):
        pairvm.resize("vm1", size)
    assert host.actions() == []


def test_resize_to_the_same_size_on_the_peer_changes_nothing(peer):
    peer.install("vm1", drbd=drbd_state())
    assert pairvm.resize("vm1", "1G")["changes"] == []
    assert peer.actions() == []


def test_resize_to_the_same_size_on_the_home_host_changes_nothing(host):
    host.install("vm1", drbd=drbd_state())
    assert pairvm.resize("vm1", 1024)["changes"] == []
    assert host.actions() == []


def test_resize_to_the_same_size_on_the_home_host_with_internal_metadata_changes_nothing(host):
    host.install("vm1", drbd=drbd_state())
    host.md_overhead = 68 * 1024  # DRBD 8.4 internal metadata of a 1 GiB device: 4K + 32K AL + 32K bitmap
    assert pairvm.resize("vm1", "1G")["changes"] == []
    assert host.actions() == []


def test_resize_grows_the_replica_on_the_peer_without_touching_drbd(peer):
    peer.install("vm1", drbd=drbd_state())
    ret = pairvm.resize("vm1", "2G")
    peer.salt["lvm.lvextend"].assert_called_once_with(size="2048M", lvpath="/dev/there/vm1")
    assert peer.actions() == ["lvm.lvextend"] and ret["changes"] == ["lvextend -L 2048M /dev/there/vm1"]
    assert peer.lvs == {"there/vm1": 2048}


def test_resize_on_the_home_host_promotes_a_stopped_vm_for_the_drbd_resize(host):
    host.install("vm1", drbd=drbd_state())
    ret = pairvm.resize("vm1", "2G")
    assert host.actions() == ["lvm.lvextend", "drbd.primary", "drbd.resize", "drbd.secondary"]
    host.salt["drbd.primary"].assert_called_once_with("vm1")
    assert ret["changes"] == ["lvextend -L 2048M /dev/here/vm1", "drbdadm primary vm1", "drbdadm resize vm1",
                              "drbdadm secondary vm1"]
    assert host.lvs == {"here/vm1": 2048} and host.drbd["vm1"]["role"] == "Secondary"


def test_resize_of_a_running_vm_resizes_drbd_without_a_role_change(host):
    host.install("vm1", drbd=drbd_state(role="Primary"), domain="running")
    pairvm.resize("vm1", "2G")
    assert host.actions() == ["lvm.lvextend", "drbd.resize"]


def test_resize_with_test_lists_without_acting(host):
    host.install("vm1", drbd=drbd_state())
    ret = pairvm.resize("vm1", "2G", test=True)
    assert ret["changes"][0] == "lvextend -L 2048M /dev/here/vm1" and len(ret["changes"]) == 4
    assert host.actions() == [] and host.lvs == {"here/vm1": 1024}


def test_resize_refuses_while_drbd_is_down(peer):
    peer.install("vm1", drbd=None)
    with pytest.raises(CommandExecutionError, match="not up"):
        pairvm.resize("vm1", "2G")
    assert peer.actions() == []


# --- cdrom --------------------------------------------------------------------------------------


@pytest.fixture
def iso(tmp_path):
    path = tmp_path / "iso" / "debian.iso"
    path.parent.mkdir()
    path.write_bytes(b"\0" * 16)
    return str(path)


@pytest.mark.parametrize("bad", ["iso/debian.iso", "/srv/../etc/shadow", "debian.iso"])
def test_cdrom_refuses_a_relative_path_or_dotdot(host, bad):
    host.install("vm1", drbd=drbd_state(role="Primary"), domain="running")
    with pytest.raises(CommandExecutionError, match="absolute path without '..'"):
        pairvm.cdrom("vm1", iso=bad)
    assert host.actions() == []


def test_cdrom_refuses_a_missing_file(host, tmp_path):
    host.install("vm1", drbd=drbd_state(role="Primary"), domain="running")
    with pytest.raises(CommandExecutionError, match="does not exist on hostA"):
        pairvm.cdrom("vm1", iso=str(tmp_path / "nope.iso"))
    assert host.actions() == []


@pytest.mark.parametrize("domain", [None, "defined"])
def test_cdrom_refuses_a_vm_that_is_not_running(host, iso, domain):
    host.install("vm1", drbd=drbd_state(), domain=domain)
    with pytest.raises(CommandExecutionError, match="vm1 is not running on hostA"):
        pairvm.cdrom("vm1", iso=iso)
    assert host.actions() == []


def test_cdrom_inserts_into_the_running_vm(host, iso):
    host.install("vm1", drbd=drbd_state(role="Primary"), domain="running")
    assert pairvm.cdrom("vm1")["cdrom"] is None
    ret = pairvm.cdrom("vm1", iso=iso)
    assert ret["cdrom"] == iso and ret["changes"] == [f"virsh change-media vm1 hdc --insert {iso}"]
    [(xml, flags)] = host.domains["vm1"].device_updates
    assert flags == libvirt.VIR_DOMAIN_AFFECT_LIVE
    disk = ET.fromstring(xml)
    assert (disk.tag, disk.get("device")) == ("disk", "cdrom")
    assert disk.find("source").get("file") == iso
    assert disk.find("target").get("dev") == "hdc" and disk.find("readonly") is not None


def test_cdrom_ejects_and_an_unchanged_cd_is_left_alone(host, iso):
    record = host.install("vm1", drbd=drbd_state(role="Primary"), domain="running")
    host.domains["vm1"].xml = render.domain_xml({**record, "cdrom": iso}, str(host.serial_dir))
    assert pairvm.cdrom("vm1") == {"name": "vm1", "cdrom": iso, "changes": [], "comment": ""}
    assert pairvm.cdrom("vm1", iso=iso)["changes"] == []
    assert host.domains["vm1"].device_updates == []
    ret = pairvm.cdrom("vm1", eject=True)
    assert ret["cdrom"] is None and ret["changes"] == ["virsh change-media vm1 hdc --eject"]
    [(xml, flags)] = host.domains["vm1"].device_updates
    assert flags == libvirt.VIR_DOMAIN_AFFECT_LIVE
    disk = ET.fromstring(xml)
    assert disk.get("device") == "cdrom" and disk.find("source") is None
    assert disk.find("target").get("dev") == "hdc"


def test_cdrom_path_with_quotes_stays_one_xml_attribute(host, tmp_path):
    odd = tmp_path / "it's \"odd\" <&>.iso"
    odd.write_bytes(b"")
    host.install("vm1", drbd=drbd_state(role="Primary"), domain="running")
    pairvm.cdrom("vm1", iso=str(odd))
    [(xml, _)] = host.domains["vm1"].device_updates
    assert ET.fromstring(xml).find("source").get("file") == str(odd)


# --- serial, monitor ------------------------------------------------------------------------------


def test_serial_returns_the_last_lines_of_the_log(host):
    host.install("vm1", drbd=drbd_state())
    (host.serial_dir / "vm1-serial.log").write_text("".join(f"line {i}\n" for i in range(1, 101)))
    assert pairvm.serial("vm1", lines=3) == "line 98\nline 99\nline 100"
    assert pairvm.serial("vm1").splitlines()[0] == "line 51"
    assert pairvm.serial("vm1", lines=500).count("\n") == 99


def test_serial_without_a_log_says_so(host):
    host.install("vm1", drbd=drbd_state())
    with pytest.raises(CommandExecutionError, match="vm1 has no serial log on hostA"):
        pairvm.serial("vm1")


def test_serial_of_a_vm_not_defined_here_is_refused(host):
    with pytest.raises(CommandExecutionError, match="vm1 is not defined on this host"):
        pairvm.serial("vm1")


@pytest.mark.parametrize("lines", [0, -2, "x"])
def test_serial_refuses_a_line_count_below_one(host, lines):
    host.install("vm1", drbd=drbd_state())
    (host.serial_dir / "vm1-serial.log").write_text("a\nb\nc\n")
    with pytest.raises(CommandExecutionError, match="lines must be a whole number of 1 or more"):
        pairvm.serial("vm1", lines=lines)


def test_monitor_passes_an_hmp_command(host, monkeypatch):
    host.install("vm1", drbd=drbd_state(role="Primary"), domain="running")
    qmc = mock.Mock(return_value="VM status: running\r\n")
    monkeypatch.setattr(pairvm.libvirt_qemu, "qemuMonitorCommand", qmc)
    assert pairvm.monitor("vm1", "info status") == "VM status: running"
    qmc.assert_called_once_with(host.domains["vm1"], "info status",
                                libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)


def test_monitor_reports_a_failed_command(host, monkeypatch):
    host.install("vm1", drbd=drbd_state(role="Primary"), domain="running")
    monkeypatch.setattr(pairvm.libvirt_qemu, "qemuMonitorCommand",
                        mock.Mock(side_effect=libvirt.libvirtError("unknown command: 'foo'")))
    with pytest.raises(CommandExecutionError, match="monitor command failed: unknown command"):
        pairvm.monitor("vm1", "foo")


@pytest.mark.parametrize("domain", [None, "defined"])
def test_monitor_refuses_a_vm_that_is_not_running(host, monkeypatch, domain):
    host.install("vm1", drbd=drbd_state(), domain=domain)
    qmc = mock.Mock()
    monkeypatch.setattr(pairvm.libvirt_qemu, "qemuMonitorCommand", qmc)
    with pytest.raises(CommandExecutionError, match="vm1 is not running on hostA"):
        pairvm.monitor("vm1", "info status")
    qmc.assert_not_called()


# --- suppress, autostart, print_ssh_forwards ---------------------------------------------------


def test_suppress_on_and_off_are_idempotent(host):
    host.install("vm1", drbd=drbd_state())
    flag = host.suppress_dir / "vm1"
    assert pairvm.suppress("vm1")["changes"] == [f"touch {flag}"]
    assert flag.exists()
    assert pairvm.suppress("vm1", on=True)["changes"] == []
    assert flag.exists()
    assert pairvm.suppress("vm1", on=False)["changes"] == [f"rm {flag}"]
    assert not flag.exists()
    assert pairvm.suppress("vm1", on=False)["changes"] == []
    assert host.actions() == []


def test_suppress_of_a_vm_not_defined_here_is_refused(host):
    with pytest.raises(CommandExecutionError, match="not defined on this host"):
        pairvm.suppress("vm1")
    assert not host.suppress_dir.exists()


def autostart_pair(host):
    """vm1 (home, DRBD down) and vm6 should start; the others should not."""
    for name, definition in (
        ("vm3", {"home": "hostA", "memory": 128, "disc": "64M", "state": "stopped"}),
        ("vm4", {"home": "hostA", "memory": 128, "disc": "64M", "suppress": True}),
        ("vm5", {"home": "hostA", "memory": 128, "disc": "64M"}),
        ("vm6", {"home": "hostA", "memory": 128, "disc": "64M"}),
        ("vm7", {"home": "hostA", "memory": 128, "disc": "64M"}),
    ):
        host.define(name, **definition)
    host.install("vm1", drbd=None)                       # home, down: up, then start
    host.install("vm2", drbd=None)                       # the peer's VM: up only
    host.install("vm3", drbd=drbd_state())               # state stopped
    host.install("vm4", drbd=drbd_state())               # suppress in pillar
    host.install("vm5", drbd=drbd_state())               # pairvm.suppress
    host.install("vm6", drbd=drbd_state())               # starts
    host.install("vm7", drbd=drbd_state(role="Primary"), domain="running")  # already running
    host.suppress_dir.mkdir()
    (host.suppress_dir / "vm5").write_text("suppressed\n")


def test_autostart_starts_only_home_running_unsuppressed_stopped_vms(host):
    autostart_pair(host)
    results = pairvm.autostart()
    assert sorted(results) == ["vm1", "vm2", "vm3", "vm4", "vm5", "vm6", "vm7"]
    assert {c[0][0] for c in host.calls("drbd.up")} == {"vm1", "vm2"}
    assert sorted(n for n, d in host.domains.items() if d.active) == ["vm1", "vm6", "vm7"]
    assert [ET.fromstring(x).findtext("name") for x in host.defined] == ["vm1", "vm6"]
    assert results["vm1"]["changes"][:2] == ["drbdadm up vm1", "drbdadm primary vm1"]
    assert results["vm2"]["changes"] == ["drbdadm up vm2"]
    for name in ("vm3", "vm4", "vm5", "vm7"):
        assert results[name]["changes"] == [], name
    assert all(r["comment"] == "ok" for r in results.values())
    assert host.drbd["vm2"]["role"] == "Secondary"


def test_autostart_with_test_lists_without_acting(host):
    autostart_pair(host)
    before = host.snapshot()
    results = pairvm.autostart(test=True)
    assert host.actions() == [] and host.snapshot() == before
    assert results["vm6"]["changes"][0] == "drbdadm primary vm6"
    assert results["vm2"]["changes"] == ["drbdadm up vm2"]


def test_autostart_with_test_reports_the_start_of_a_vm_whose_resource_it_brings_up(host):
    host.install("vm1", drbd=None)
    results = pairvm.autostart(test=True)
    assert not results["vm1"]["comment"].startswith("not started"), results["vm1"]
    assert results["vm1"]["changes"] == ["drbdadm up vm1", "pairvm start vm1 (once DRBD is Connected)"]


def test_autostart_reports_a_vm_that_may_not_start_and_goes_on(host):
    host.define("vm6", home="hostA", memory=128, disc="64M")
    host.install("vm1", drbd=drbd_state(connection="StandAlone", peer_role="Unknown", peer_disk="DUnknown"))
    host.install("vm6", drbd=drbd_state())
    results = pairvm.autostart()
    assert results["vm1"]["comment"].startswith("not started:")
    assert "pairvm split_brain_victim vm1" in results["vm1"]["comment"]
    assert results["vm6"]["comment"] == "ok"
    assert host.domains["vm6"].active and "vm1" not in host.domains


def test_autostart_reports_a_vm_libvirt_fails_to_start_and_goes_on(host):
    host.define("vm6", home="hostA", memory=128, disc="64M")
    host.install("vm1", drbd=drbd_state())
    host.install("vm6", drbd=drbd_state())
    host.conn.fail_start.add("vm1")
    results = pairvm.autostart()
    assert results["vm1"]["comment"].startswith("not started:")
    assert host.domains["vm6"].active and results["vm6"]["comment"] == "ok"


def test_print_ssh_forwards_lists_the_running_vms_consoles(host):
    host.install("vm1", drbd=drbd_state(role="Primary"), domain="running")
    host.install("vm2", drbd=drbd_state(), domain="defined")
    host.domains["stray"] = LibvirtDomain(host, "stray", "<domain/>")
    host.domains["stray"].active = True
    assert pairvm.print_ssh_forwards() == "ssh -N -L 5901:127.0.0.1:5901 root@10.77.0.11  # vm1"
    host.domains["vm1"].active = False
    assert pairvm.print_ssh_forwards() == "no VM is running on this host"


# --- list: one query of each runtime, however many VMs ------------------------------------------


@pytest.mark.parametrize("count", [1, 50])
def test_list_queries_the_runtime_once_whatever_the_number_of_vms(host, count):
    template = host.record("vm1")
    for i in range(1, count + 1):
        name = f"vm{i}"
        (host.machines / name).write_text(schema.dump_record({**template, "name": name}))
        host.drbd[name] = drbd_state(role="Primary" if i % 2 else "Secondary")
        if i % 2:
            host.domains[name] = LibvirtDomain(host, name, "<domain/>")
            host.domains[name].active = True
    rows = pairvm.list_()["vms"]
    assert [r["name"] for r in rows] == sorted(f"vm{i}" for i in range(1, count + 1))
    assert sum(r["running"] for r in rows) == (count + 1) // 2
    assert all(r["drbd_connection"] == "Connected" and r["location"] == "home" for r in rows)
    assert host.opened.call_count == 1 and host.conn.list_queries == 1
    host.salt["drbd.status"].assert_called_once_with()
    assert not [n for n, _, _ in host.log if n.startswith("lvm.") or n == "cmd.run_all"]


# --- split_brain_victim -----------------------------------------------------------------

SPLIT = {"connection": "StandAlone", "peer_role": "Unknown", "peer_disk": "DUnknown"}


def test_split_brain_victim_keeps_a_full_snapshot_then_discards(peer):
    peer.install("vm1", drbd=drbd_state(**SPLIT))
    ret = pairvm.split_brain_victim("vm1")
    assert peer.actions() == ["lvm.lvcreate", "drbd.connect"]
    (args, kwargs), = peer.calls("lvm.lvcreate")
    assert args[0].startswith("vm1-sb-") and args[1] == "there"
    assert kwargs == {"size": "1024M", "snapshot": "vm1"}
    assert peer.calls("drbd.connect") == [(("vm1",), {"discard_my_data": True})]
    assert f"there/{args[0]}" in ret["comment"] and "hostA" in ret["comment"]
    assert ret["changes"][0] == f"lvcreate -s -n {args[0]} -L 1024M there/vm1"


def test_split_brain_victim_demotes_a_primary_first_and_takes_a_given_size(peer):
    peer.install("vm1", drbd=drbd_state(role="Primary", **SPLIT))
    pairvm.split_brain_victim("vm1", snapshot_size="256M")
    assert peer.actions() == ["lvm.lvcreate", "drbd.secondary", "drbd.connect"]
    assert peer.calls("lvm.lvcreate")[0][1]["size"] == "256M"


def test_split_brain_victim_without_snapshot_only_when_told(peer):
    peer.install("vm1", drbd=drbd_state(**SPLIT))
    ret = pairvm.split_brain_victim("vm1", snapshot=False)
    assert peer.actions() == ["drbd.connect"]
    assert "kept" not in ret["comment"]


def test_split_brain_victim_test_true_lists_the_commands_and_changes_nothing(peer):
    peer.install("vm1", drbd=drbd_state(role="Primary", **SPLIT))
    before = peer.snapshot()
    ret = pairvm.split_brain_victim("vm1", test=True)
    assert peer.actions() == [] and peer.snapshot() == before
    assert [c.split()[0:2] for c in ret["changes"]] == [["lvcreate", "-s"], ["drbdadm", "secondary"],
                                                        ["drbdadm", "connect"]]
    assert ret["comment"].startswith("would: ")


@pytest.mark.parametrize("state, domain, message", [
    (None, None, "DRBD resource vm1 is not up on hostB"),
    (drbd_state(), None, "is Connected with its disc UpToDate, not in split brain: nothing is discarded"),
    (dict(drbd_state(**SPLIT), split_brain=False), None,
     r"StandAlone.*not in split brain.*drbdadm connect vm1"),
    (drbd_state(**SPLIT), "running", "VM vm1 is running on hostB"),
])
def test_split_brain_victim_refuses_unless_a_split_brain_with_the_vm_stopped(peer, state, domain, message):
    peer.install("vm1", drbd=state, domain=domain)
    with pytest.raises(CommandExecutionError, match=message):
        pairvm.split_brain_victim("vm1")
    assert peer.actions() == []


@pytest.mark.parametrize("kwargs, message", [
    ({"snapshot": "no"}, "snapshot must be True or False"),
    ({"snapshot": False, "snapshot_size": "1G"}, "snapshot_size was given with snapshot=False"),
    ({"snapshot_size": "lots"}, "lots"),
])
def test_split_brain_victim_bad_input_changes_nothing(peer, kwargs, message):
    peer.install("vm1", drbd=drbd_state(**SPLIT))
    with pytest.raises(CommandExecutionError, match=message):
        pairvm.split_brain_victim("vm1", **kwargs)
    assert peer.actions() == []


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_split_brain_victim_bad_name(peer, bad):
    with pytest.raises(CommandExecutionError):
        pairvm.split_brain_victim(bad)
    assert peer.actions() == []


def test_split_brain_victim_whose_snapshot_fails_discards_nothing(peer):
    peer.install("vm1", drbd=drbd_state(**SPLIT))
    peer.fail("lvm.lvcreate", CommandExecutionError("Volume group there has insufficient free space"))
    with pytest.raises(CommandExecutionError, match="insufficient free space"):
        pairvm.split_brain_victim("vm1")
    assert peer.actions() == ["lvm.lvcreate"]
