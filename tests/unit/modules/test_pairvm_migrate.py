"""_modules/pairvm_migrate.py against the fake host: the order of the DRBD window, the
preflight's refusals, the revert after a failure, cleanup. The real migration runs in
tests/integration/test_migrate.py."""

import hashlib
import io
from unittest import mock

import libvirt
import pytest

from salt.exceptions import CommandExecutionError
from tests.unit.fakehost import MODULES, LibvirtDomain, drbd_state

pairvm = MODULES["pairvm_migrate"]
PEER_IP = "10.77.0.12"


class Holder:
    """The ssh process that holds the peer's lock: echoes our line, or exits 75 (busy)."""

    def __init__(self, peer, argv, **kwargs):
        peer.lock_argv = argv
        self.busy = peer.lock_busy
        self.rc = 75 if self.busy else None
        self.stdin = io.BytesIO()
        self.stdout = io.BytesIO(b"" if self.busy else b"pairvm\n")
        self.stderr = io.BytesIO(b"")
        peer.lock_held = not self.busy

    def poll(self):
        return self.rc

    def wait(self, timeout=None):
        self.rc = self.rc if self.rc is not None else 0
        return self.rc

    def kill(self):
        self.rc = -9


class Peer:
    """hostB as hostA reaches it: commands over ssh, its libvirt over qemu+ssh."""

    def __init__(self, host):
        self.host, self.commands, self.domains = host, [], {}
        self.role, self.two_primaries, self.record = "Secondary", False, None
        self.lock_busy, self.lock_held, self.lock_argv = False, False, None
        self.conn = mock.Mock()
        self.conn.lookupByName.side_effect = self.lookup
        self.conn.getFreeMemory.return_value = 8 * 2**30
        self.fail_open = None
        self.secondary_fails = False
        self.stuck_open = False  # net-options --allow-two-primaries=no answers 0 but changes nothing

    def lookup(self, name):
        if name not in self.domains:
            raise libvirt.libvirtError(f"Domain not found: {name}")
        return self.domains[name]

    def run(self, argv):
        remote = argv[argv.index("--") + 1:]
        self.commands.append(" ".join(remote))
        if remote[:2] == ["drbdadm", "secondary"] and self.secondary_fails:
            return {"retcode": 11, "stdout": "",
                    "stderr": "State change failed: (-12) Device is held open by someone"}
        if remote[:2] in (["drbdadm", "primary"], ["drbdadm", "secondary"]):
            self.role = remote[1].capitalize()
            self.host.drbd[remote[2]]["peer_role"] = self.role  # as this host's events2 shows it
        elif remote[:2] == ["drbdadm", "net-options"]:
            self.two_primaries = remote[2].endswith("=yes") or (self.two_primaries and self.stuck_open)
        elif remote[0] == "sha256sum":
            return {"retcode": 0, "stdout": f"{hashlib.sha256(self.record).hexdigest()}  {remote[1]}",
                    "stderr": ""}
        elif remote[0] == "drbdsetup":
            text = "allow-two-primaries yes;" if self.two_primaries else "protocol C;"
            return {"retcode": 0, "stdout": text, "stderr": ""}
        return {"retcode": 0, "stdout": "", "stderr": ""}


@pytest.fixture
def pair(host, monkeypatch):
    """hostA running vm1 (home hostA), hostB its peer; vm2 (home hostB) away on hostA."""
    peer = Peer(host)
    host.peer = peer
    for name, role in (("vm1", "Primary"), ("vm2", "Primary")):
        host.install(name, drbd=drbd_state(role=role), domain="running")
    peer.record = (host.machines / "vm1").read_bytes()
    local_run = host.salt["cmd.run_all"].side_effect

    def run_all(argv, **kwargs):
        if argv[0] != "ssh":
            return local_run(argv, **kwargs)
        host.log.append(("cmd.run_all", (argv,), kwargs))
        return peer.run(argv)

    host.salt["cmd.run_all"].side_effect = run_all
    shown = {"two": False}

    def net_options(name, allow):
        host.log.append(("drbd.net_options", (name, allow), {}))
        shown["two"] = allow

    host.salt["drbd.net_options"] = mock.Mock(side_effect=net_options)
    host.salt["drbd.show"] = mock.Mock(side_effect=lambda name: "allow-two-primaries yes;" if shown["two"]
                                       else "protocol C;")
    opened = host.opened.side_effect

    def open_(uri):
        if uri.startswith("qemu+ssh://"):
            if peer.fail_open:
                raise libvirt.libvirtError(peer.fail_open)
            return peer.conn
        return opened(uri) if opened else host.conn

    host.opened.side_effect = open_
    monkeypatch.setattr(pairvm.subprocess, "Popen", lambda argv, **kw: Holder(peer, argv, **kw))
    monkeypatch.setattr(pairvm, "POLL", 0.01)
    is_active = LibvirtDomain.isActive  # libvirt answers 1 or 0, not a bool
    monkeypatch.setattr(LibvirtDomain, "isActive", lambda self: int(is_active(self)))
    return host


def migrating(host, fail=None, stats=None):
    """Give vm1's domain a migrateToURI3 that moves it to the peer (or raises ``fail``)."""
    dom = host.domains["vm1"]
    peer = host.peer

    def migrate(uri, params, flags):
        host.log.append(("virsh.migrate", (uri, params, flags), {}))
        assert peer.role == "Primary" and peer.two_primaries  # the window is open
        if fail:
            raise libvirt.libvirtError(fail)
        dom.active = False
        del host.domains["vm1"]
        moved = mock.Mock()
        moved.isActive.return_value = 1
        moved.jobStats.return_value = stats or {"type": 3, "time_elapsed": 800, "downtime": 40}
        peer.domains["vm1"] = moved

    dom.migrateToURI3 = migrate
    dom.jobStats = lambda flags=0: {"type": 2, "data_total": 100, "data_processed": 50, "data_remaining": 50}
    dom.migrateSetMaxDowntime = mock.Mock()
    dom.abortJob = mock.Mock()
    return dom


def steps(host):
    """What was done on both hosts, in order."""
    done = []
    for function, args, _ in host.log:
        if function == "cmd.run_all" and args[0][0] == "ssh":
            remote = args[0][args[0].index("--") + 1:]
            if remote[0] == "drbdadm":
                done.append("peer " + " ".join(remote[1:-1]))
        elif function in ("drbd.net_options", "drbd.primary", "drbd.secondary", "virsh.migrate"):
            done.append(f"{function} {args[1] if function == 'drbd.net_options' else ''}".strip())
    return done


def test_migration_opens_the_window_moves_and_closes_it_in_order(pair):
    migrating(pair)
    ret = pairvm.migrate("vm1", away=True)
    assert steps(pair) == [
        "drbd.net_options True", "peer net-options --allow-two-primaries=yes", "peer primary",
        "virsh.migrate", "drbd.secondary", "drbd.net_options False",
        "peer net-options --allow-two-primaries=no",
    ]
    assert ret["migration"] == {"time_ms": 800, "downtime_ms": 40, "setup_ms": None, "bytes": None}
    assert ret["comment"] == "VM vm1 runs on hostB: 800 ms in all, 40 ms of downtime"
    assert pair.drbd["vm1"]["role"] == "Secondary" and pair.peer.role == "Primary"
    assert not pair.peer.two_primaries and pair.peer.lock_held
    uri, params, flags = pair.calls("virsh.migrate")[0][0]
    assert uri == f"qemu+ssh://root@{PEER_IP}/system" and params == {"migrate_uri": f"tcp://{PEER_IP}"}
    assert flags == (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
                     | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)
    assert "vm1" not in pair.domains


def test_auto_converge_can_be_turned_on(pair):
    migrating(pair)
    planned = pairvm.migrate("vm1", away=True, auto_converge=True, test=True)["changes"]
    assert [c for c in planned if c.startswith("virsh migrate")][0].endswith(
        f"--migrateuri tcp://{PEER_IP} --auto-converge (max downtime 30 ms)")
    pairvm.migrate("vm1", away=True, auto_converge=True)
    flags = pair.calls("virsh.migrate")[0][0][2]
    assert flags & libvirt.VIR_MIGRATE_LIVE and flags & libvirt.VIR_MIGRATE_AUTO_CONVERGE


def test_a_window_that_stays_open_is_an_error_not_a_success(pair):
    migrating(pair)
    pair.peer.stuck_open = True
    with pytest.raises(CommandExecutionError, match="vm1 still allows two primaries on 10.77.0.12"):
        pairvm.migrate("vm1", away=True)


def test_the_peer_lock_is_the_vms_lock_file_there(pair):
    migrating(pair)
    pairvm.migrate("vm1", away=True)
    assert pair.peer.lock_argv[-6:] == ["flock", "-n", "-E", "75", f"{pairvm.layout.LOCK_DIR}/vm1.lock",
                                         "cat"]


def test_a_busy_peer_lock_refuses_before_anything_changes(pair):
    migrating(pair)
    pair.peer.lock_busy = True
    with pytest.raises(CommandExecutionError, match="another pairvm operation on vm1 is running on the peer"):
        pairvm.migrate("vm1", away=True)
    assert steps(pair) == [] and pair.domains["vm1"].active


def test_test_mode_lists_the_window_and_changes_nothing(pair):
    migrating(pair)
    ret = pairvm.migrate("vm1", away=True, test=True)
    assert ret["changes"][:3] == ["drbdadm net-options --allow-two-primaries=yes vm1",
                                  f"ssh root@{PEER_IP} drbdadm net-options --allow-two-primaries=yes vm1",
                                  f"ssh root@{PEER_IP} drbdadm primary vm1"]
    assert ret["changes"][-1] == "drbdsetup show vm1 on both hosts: no allow-two-primaries"
    assert steps(pair) == [] and pair.domains["vm1"].active and ret["comment"].startswith("would: ")


@pytest.mark.parametrize("setup, expected", [
    (lambda h: h.domains["vm1"].destroy(), "VM vm1 is not running on hostA"),
    (lambda h: h.drbd["vm1"].update(connection="StandAlone"), "StandAlone, not Connected"),
    (lambda h: setattr(h.peer, "record", b"other"), "/machines/vm1 differs between hostA and hostB"),
    (lambda h: h.peer.conn.getFreeMemory.configure_mock(return_value=100 * 2**20), "100 MiB of memory free"),
    (lambda h: setattr(h.peer, "fail_open", "Connection refused"), "libvirt on hostB does not answer"),
])
def test_preflight_refuses_and_changes_nothing(pair, setup, expected):
    migrating(pair)
    setup(pair)
    before = pair.snapshot()
    with pytest.raises(CommandExecutionError, match=expected):
        pairvm.migrate("vm1", away=True)
    assert steps(pair) == [] and pair.snapshot() == before and pair.peer.role == "Secondary"


def test_a_vm_is_moved_away_from_home_only_with_away(pair):
    migrating(pair)
    with pytest.raises(CommandExecutionError, match="pass away=True"):
        pairvm.migrate("vm1")
    assert steps(pair) == []


def test_a_failed_migration_is_aborted_and_reverted(pair):
    migrating(pair, fail="operation failed: job 'migration out' failed: Connection reset")
    with pytest.raises(CommandExecutionError, match=r"failed and was undone: libvirt: operation failed.*"
                                                    r"runs on hostA: True, on hostB: False"):
        pairvm.migrate("vm1", away=True)
    assert steps(pair) == [
        "drbd.net_options True", "peer net-options --allow-two-primaries=yes", "peer primary",
        "virsh.migrate", "peer secondary", "drbd.net_options False",
        "peer net-options --allow-two-primaries=no",
    ]
    assert pair.domains["vm1"].active and pair.drbd["vm1"]["role"] == "Primary"
    assert pair.peer.role == "Secondary" and not pair.peer.two_primaries


def test_a_revert_that_fails_says_so_and_leaves_the_window_to_cleanup(pair):
    migrating(pair, fail="Unable to read from monitor: Connection reset by peer")
    pair.peer.secondary_fails = True  # the destination's QEMU still holds the disc
    with pytest.raises(CommandExecutionError, match=r"could NOT be undone \(the DRBD window is still open: "
                                                    r".*held open.*\): run pairvm.migrate vm1 cleanup=True"):
        pairvm.migrate("vm1", away=True)
    assert pair.domains["vm1"].active and pair.peer.two_primaries


def test_drbd_leaving_connected_aborts_the_job(pair):
    dom = migrating(pair)
    release = {"go": False}

    def slow(uri, params, flags):
        pair.log.append(("virsh.migrate", (uri, params, flags), {}))
        pair.drbd["vm1"]["connection"] = "WFConnection"
        while not release["go"]:
            pass
        raise libvirt.libvirtError("operation aborted: migration out job: canceled by client")

    dom.migrateToURI3 = slow
    dom.abortJob.side_effect = lambda: release.update(go=True)
    with pytest.raises(CommandExecutionError, match="became WFConnection during the migration"):
        pairvm.migrate("vm1", away=True, timeout=5)  # a product that never aborts fails in 5 s
    dom.abortJob.assert_called()
    dom.migrateSetMaxDowntime.assert_called_with(30)
    assert pair.domains["vm1"].active and pair.peer.role == "Secondary"


def test_cleanup_finishes_a_migration_that_landed_on_the_peer(pair):
    pair.domains["vm1"].active = False
    arrived = mock.Mock()
    arrived.isActive.return_value = 1
    pair.peer.domains["vm1"] = arrived
    pair.peer.role, pair.peer.two_primaries = "Primary", True
    ret = pairvm.migrate("vm1", cleanup=True)
    assert steps(pair) == ["drbd.secondary", "drbd.net_options False",
                           "peer net-options --allow-two-primaries=no"]
    assert ret["comment"] == "VM vm1 runs on hostB; DRBD is single-primary again"


def test_cleanup_refuses_when_the_vm_runs_on_both(pair):
    both = mock.Mock()
    both.isActive.return_value = 1
    pair.peer.domains["vm1"] = both
    with pytest.raises(CommandExecutionError, match="running on BOTH hostA and hostB"):
        pairvm.migrate("vm1", cleanup=True)
    assert steps(pair) == []


def test_a_bad_limit_is_refused_before_anything(pair):
    migrating(pair)
    with pytest.raises(CommandExecutionError, match="max_downtime"):
        pairvm.migrate("vm1", away=True, max_downtime="fast")
    assert steps(pair) == [] and pair.peer.lock_argv is None


def test_a_bad_name_is_refused(pair):
    with pytest.raises(CommandExecutionError, match="name"):
        pairvm.migrate("vm1;reboot")
    assert steps(pair) == []


def test_a_vm_away_from_home_goes_back_without_away(pair):
    dom = pair.domains["vm2"]
    dom.migrateToURI3 = mock.Mock()
    dom.jobStats = lambda flags=0: {}
    dom.migrateSetMaxDowntime = mock.Mock()
    pair.peer.record = (pair.machines / "vm2").read_bytes()
    moved = mock.Mock()
    moved.jobStats.return_value = {"time_elapsed": 5, "downtime": 1}
    pair.peer.conn.lookupByName.side_effect = lambda name: moved
    moved.isActive.return_value = False
    ret = pairvm.migrate("vm2")
    dom.migrateToURI3.assert_called_once()
    assert ret["comment"].startswith("VM vm2 runs on hostB")
