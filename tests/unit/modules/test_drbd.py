"""Unit tests of the drbd execution module: argv lists, parsing, validation."""

import importlib.util
import sys
from pathlib import Path
from unittest import mock

import pytest

from pairvmlib import layout
from salt.exceptions import CommandExecutionError, SaltInvocationError

MODULE = Path(__file__).resolve().parents[3] / "_modules" / "drbd.py"

# drbdsetup-84 `events2 --now all`, as the 8.4 kernel makes it print (and the shim, by contract)
EVENTS = "".join(line + "\n" for line in [
    "exists resource name:vm1 role:Primary suspended:no",
    "exists connection name:vm1 peer-node-id:0 conn-name:peer connection:Connected role:Secondary",
    "exists device name:vm1 volume:0 minor:3 disk:UpToDate",
    "exists peer-device name:vm1 peer-node-id:0 conn-name:peer volume:0 replication:SyncSource"
    " peer-disk:Inconsistent resync-suspended:no",
    "exists resource name:vm2 role:Secondary suspended:no",
    "exists connection name:vm2 peer-node-id:0 connection:StandAlone role:Unknown",
    "exists device name:vm2 volume:0 minor:4 disk:UpToDate",
    "exists peer-device name:vm2 peer-node-id:0 volume:0 replication:Off"
    " peer-disk:DUnknown resync-suspended:no",
    "exists resource name:vm3 role:Secondary suspended:no",
    "exists connection name:vm3 peer-node-id:0 conn-name:peer connection:Connecting role:Unknown",
    "exists device name:vm3 volume:0 minor:5 disk:Inconsistent",
    "exists peer-device name:vm3 peer-node-id:0 conn-name:peer volume:0"
    " replication:Off peer-disk:DUnknown resync-suspended:no",
    "exists -",
])


@pytest.fixture
def drbd(tmp_path, monkeypatch):
    monkeypatch.setattr(layout, "SPLIT_BRAIN_DIR", str(tmp_path / "split-brain"))
    spec = importlib.util.spec_from_file_location("pairvm_drbd_under_test", MODULE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    run_all = mock.MagicMock(return_value={"retcode": 0, "stdout": "", "stderr": ""})
    mod.__salt__ = {"cmd.run_all": run_all}
    sys.modules.pop("pairvm_drbd_under_test", None)
    return mod


def argv(drbd):
    return [c.args[0] for c in drbd.__salt__["cmd.run_all"].call_args_list]


def test_virtual_reports_missing_tools(drbd):
    with mock.patch("salt.utils.path.which", return_value=None):
        ok, why = drbd.__virtual__()
    assert ok is False and "drbd-utils" in why
    with mock.patch("salt.utils.path.which", return_value="/usr/sbin/drbdadm"):
        assert drbd.__virtual__() == "drbd"


def test_status_one_command_for_all(drbd):
    drbd.__salt__["cmd.run_all"].return_value = {"retcode": 0, "stdout": EVENTS, "stderr": ""}
    res = drbd.status()
    assert argv(drbd) == [["drbdsetup", "events2", "--now", "all"]]
    kwargs = drbd.__salt__["cmd.run_all"].call_args.kwargs
    assert kwargs["python_shell"] is False
    assert res["vm1"] == {
        "role": "Primary", "peer_role": "Secondary", "connection": "Connected",
        "replication": "SyncSource", "disk": "UpToDate", "peer_disk": "Inconsistent",
        "minor": 3, "volume": 0, "suspended": "no", "standalone": False, "split_brain": False,
        "connected": True, "syncing": True, "up_to_date": False,
    }
    # StandAlone alone is what a plain `drbdadm disconnect` gives too: no split brain
    assert res["vm2"]["split_brain"] is False and res["vm2"]["standalone"] is True
    assert res["vm2"]["peer_role"] == "Unknown"
    assert res["vm3"]["connection"] == "Connecting" and res["vm3"]["split_brain"] is False
    assert drbd.status("vm3")["replication"] == "Off"
    assert drbd.status("vm9") == {}


def test_status_of_nothing(drbd):
    drbd.__salt__["cmd.run_all"].return_value = {"retcode": 0, "stdout": "exists -\n",
                                                  "stderr": ""}
    assert drbd.status() == {}


@pytest.mark.parametrize("call, expected", [
    (("create_md", "vm1"), ["drbdadm", "create-md", "--force", "vm1"]),
    (("up", "vm1"), ["drbdadm", "up", "vm1"]),
    (("down", "vm1"), ["drbdadm", "down", "vm1"]),
    (("primary", "vm1"), ["drbdadm", "primary", "vm1"]),
    (("secondary", "vm1"), ["drbdadm", "secondary", "vm1"]),
    (("connect", "vm1"), ["drbdadm", "connect", "vm1"]),
    (("disconnect", "vm1"), ["drbdadm", "disconnect", "vm1"]),
    (("resize", "vm1"), ["drbdadm", "resize", "vm1"]),
    (("adjust", "vm1"), ["drbdadm", "adjust", "vm1"]),
    (("dry_run_up", "vm1"), ["drbdadm", "-d", "up", "vm1"]),
    (("net_options", "vm1", True), ["drbdadm", "net-options", "--allow-two-primaries=yes", "vm1"]),
    (("net_options", "vm1", False), ["drbdadm", "net-options", "--allow-two-primaries=no", "vm1"]),
    (("net_options", "vm1", "yes"), ["drbdadm", "net-options", "--allow-two-primaries=no", "vm1"]),
    (("show", "vm1"), ["drbdsetup", "show", "vm1"]),
])
def test_argv(drbd, call, expected):
    getattr(drbd, call[0])(*call[1:])
    assert argv(drbd) == [expected]


def test_flags(drbd):
    assert drbd.primary("vm1", force=True) is True
    drbd.connect("vm1", discard_my_data=True)
    assert argv(drbd) == [["drbdadm", "primary", "--force", "vm1"],
                          ["drbdadm", "connect", "--discard-my-data", "vm1"]]


def test_check_config_with_node(drbd):
    drbd.__salt__["cmd.run_all"].return_value = {"retcode": 0, "stdout": "# /x\n",
                                                  "stderr": ""}
    assert drbd.check_config("/tmp/vm1.res", node="hostB") == "# /x\n"
    call = drbd.__salt__["cmd.run_all"].call_args
    assert call.args[0] == ["drbdadm", "-c", "/tmp/vm1.res", "dump"]
    assert call.kwargs["env"] == {"__DRBD_NODE__": "hostB"}
    drbd.check_config("/tmp/vm1.res")
    assert "env" not in drbd.__salt__["cmd.run_all"].call_args.kwargs


def test_dry_run_returns_lines(drbd):
    drbd.__salt__["cmd.run_all"].return_value = {
        "retcode": 0, "stdout": "drbdsetup-84 new-resource vm1\ndrbdsetup-84 new-minor vm1 3 0\n",
        "stderr": ""}
    assert drbd.dry_run_up("vm1") == ["drbdsetup-84 new-resource vm1",
                                     "drbdsetup-84 new-minor vm1 3 0"]


def test_failure_message_names_command_and_stderr(drbd):
    drbd.__salt__["cmd.run_all"].return_value = {
        "retcode": 11, "stdout": "",
        "stderr": "0: State change failed: (-1) Multiple primaries not allowed by config\n"
                  "Command 'drbdsetup-84 primary 0' terminated with exit code 11\n"}
    with pytest.raises(CommandExecutionError) as exc:
        drbd.primary("vm1")
    text = str(exc.value)
    assert "'drbdadm primary vm1' failed with exit code 11" in text
    assert "Multiple primaries not allowed by config" in text


BAD = ["", "Vm1", "1vm", "vm1;reboot", "vm 1", "-vm", "vm1$(id)", "a" * 16, "../x", 3, "vm1\n"]
FUNCS = ["status", "create_md", "up", "down", "primary", "secondary", "connect", "disconnect",
         "resize", "adjust", "dry_run_up", "net_options", "show"]


@pytest.mark.parametrize("func, bad", [(f, b) for f in FUNCS for b in BAD]
                         + [(f, None) for f in FUNCS if f != "status"])
def test_bad_names_rejected_before_any_command(drbd, func, bad):
    with pytest.raises(SaltInvocationError):
        getattr(drbd, func)(bad)
    assert drbd.__salt__["cmd.run_all"].call_count == 0


@pytest.mark.parametrize("path, node", [("relative.res", None), ("/x.res", "-h"),
                                        ("/x.res", "a b"), ("/x\n.res", None)])
def test_check_config_validation(drbd, path, node):
    with pytest.raises(SaltInvocationError):
        drbd.check_config(path, node=node)
    assert drbd.__salt__["cmd.run_all"].call_count == 0


def test_docstrings_have_cli_examples(drbd):
    for func in ("status", "create_md", "up", "down", "primary", "secondary", "connect",
                 "disconnect", "resize", "adjust", "dry_run_up", "check_config"):
        assert "CLI Example:" in getattr(drbd, func).__doc__, func


def mark(drbd, name):
    """What the split-brain handler of global_common.conf does."""
    Path(layout.SPLIT_BRAIN_DIR).mkdir(exist_ok=True)
    (Path(layout.SPLIT_BRAIN_DIR) / name).touch()


def test_split_brain_is_standalone_marked_by_the_kernels_handler(drbd):
    drbd.__salt__["cmd.run_all"].return_value = {"retcode": 0, "stdout": EVENTS, "stderr": ""}
    mark(drbd, "vm2")
    mark(drbd, "vm3")  # marked, but connecting again: not (yet) a split brain
    res = drbd.status()
    assert res["vm2"]["split_brain"] is True
    assert res["vm3"]["split_brain"] is False and res["vm1"]["split_brain"] is False
    assert drbd.status("vm2")["split_brain"] is True


@pytest.mark.parametrize("call", [("connect", "vm2"), ("up", "vm2")])
def test_a_new_connection_attempt_forgets_the_mark(drbd, call):
    mark(drbd, "vm2")
    mark(drbd, "vm1")
    getattr(drbd, call[0])(*call[1:])
    assert sorted(p.name for p in Path(layout.SPLIT_BRAIN_DIR).iterdir()) == ["vm1"]


# drbdsetup-84 `show all` as 8.4.11 prints it: vm1 authenticates, vm2 does not, vm3 is
# StandAlone (no connection configured: nothing to say)
SHOW = """resource vm1 {
    options {
    }
    net {
        cram-hmac-alg       "sha1";
        shared-secret       "Zm9v+bar/baz=";
        after-sb-0pri       discard-zero-changes;
    }
    _remote_host {
        address                 ipv4 10.78.0.12:7800;
    }
    _this_host {
        address                 ipv4 10.78.0.11:7800;
        volume 0 {
            device                      minor 3;
            disk                        "/dev/here/vm1";
            meta-disk                   internal;
        }
    }
}

resource "disk" {
    options {
    }
    net {
        after-sb-0pri       discard-zero-changes;
    }
    _remote_host {
        address                 ipv4 10.78.0.12:7801;
    }
    _this_host {
        address                 ipv4 10.78.0.11:7801;
    }
}

resource vm3 {
    options {
    }
    _this_host {
        volume 0 {
            device                      minor 5;
        }
    }
}
"""


def test_peer_auth_reads_show_once_and_never_returns_or_logs_the_secret(drbd):
    drbd.__salt__["cmd.run_all"].return_value = {"retcode": 0, "stdout": SHOW, "stderr": ""}
    assert drbd.peer_auth() == {"vm1": True, "disk": False}
    assert argv(drbd) == [["drbdsetup", "show", "all"]]
    assert drbd.__salt__["cmd.run_all"].call_args.kwargs["output_loglevel"] == "quiet"


@pytest.mark.parametrize("line", ['        cram-hmac-alg       "sha1";\n',
                                  '        shared-secret       "Zm9v+bar/baz=";\n'])
def test_the_algorithm_or_the_secret_alone_is_no_authentication(drbd, line):
    drbd.__salt__["cmd.run_all"].return_value = {"retcode": 0, "stdout": SHOW.replace(line, ""), "stderr": ""}
    assert drbd.peer_auth()["vm1"] is False


# drbdsetup-84 `events2 --now --statistics all` (fields the 8.4 tools print, KiB)
STATISTICS = "".join(line + "\n" for line in [
    "exists resource name:vm1 role:Primary suspended:no write-ordering:flush",
    "exists connection name:vm1 peer-node-id:0 conn-name:peer connection:Connected role:Secondary",
    "exists device name:vm1 volume:0 minor:3 disk:UpToDate size:65400 read:1204 written:8192"
    " al-writes:3 bm-writes:0 upper-pending:0 lower-pending:0",
    "exists peer-device name:vm1 peer-node-id:0 conn-name:peer volume:0 replication:SyncSource"
    " peer-disk:Inconsistent resync-suspended:no received:0 sent:40000 out-of-sync:25400 pending:0 unacked:0",
    "exists -",
])


def test_status_with_statistics_is_the_same_one_command(drbd):
    drbd.__salt__["cmd.run_all"].return_value = {"retcode": 0, "stdout": STATISTICS, "stderr": ""}
    res = drbd.status(statistics=True)
    assert argv(drbd) == [["drbdsetup", "events2", "--now", "--statistics", "all"]]
    assert res["vm1"]["statistics"] == {"size": 65400, "read": 1204, "written": 8192, "received": 0,
                                        "sent": 40000, "out_of_sync": 25400}
    assert res["vm1"]["syncing"] is True and res["vm1"]["disk"] == "UpToDate"
