"""_states/pairvm_host.py with Salt's loader mocked.

The commands are mocked here (their argv is checked); the real blkid, wipefs,
LVM, ssh-keygen, ifupdown and drbdadm run in tests/functional/test_host_*.py.
"""

import os
import stat
from unittest import mock

import pytest

from pairvmlib import render
from salt.exceptions import CommandExecutionError, SaltInvocationError
from tests.unit.conftest import Commands, done, load

states = load("_states/pairvm_host.py", "pairvm_host_states")


# --- states -------------------------------------------------------------------------

@pytest.fixture
def state(loader_mock):
    def install(salt, test=False, minion="hostA"):
        loader_mock(states, salt=salt, grains={"id": minion}, opts={"test": test, "id": minion})
        states.__states__ = salt.get("__states__", {})
        return states

    return install


def usage(reason, usable, kind="refused"):
    return {"verdict": {"usable": usable, "state": kind, "reason": reason}}


def test_pvs_usable_fails_naming_each_device_and_what_is_on_it(state):
    probe = mock.Mock(side_effect=[usage("/dev/sdb is blank", True, "blank"),
                                   usage("/dev/sdc holds data: a ext4 signature at offset 0x438", False)])
    ret = state({"pairvm_host.device_usage": probe}).pvs_usable("here", ["/dev/sdb", "/dev/sdc"])
    assert ret["result"] is False and ret["changes"] == {}
    assert ret["comment"].startswith(
        "Refusing to use /dev/sdb, /dev/sdc for volume group here; nothing was changed.")
    assert "/dev/sdc holds data: a ext4 signature at offset 0x438" in ret["comment"]
    assert "wipefs -a" in ret["comment"]
    probe.assert_has_calls([mock.call("/dev/sdb", vg="here"), mock.call("/dev/sdc", vg="here")])


@pytest.mark.parametrize("test", [False, True])
def test_pvs_usable_passes_without_changes(state, test):
    probe = mock.Mock(return_value=usage("/dev/sdb is a physical volume of here", True, "member"))
    ret = state({"pairvm_host.device_usage": probe}, test=test).pvs_usable("here", ["/dev/sdb"])
    assert ret == {"name": "here", "result": True, "changes": {},
                   "comment": "/dev/sdb is a physical volume of here"}


def test_pvs_usable_probe_error_and_bad_devices_fail(state):
    probe = mock.Mock(side_effect=CommandExecutionError("wipefs failed"))
    ret = state({"pairvm_host.device_usage": probe}).pvs_usable("here", ["/dev/sdb"])
    assert ret["result"] is False and "/dev/sdb cannot be probed: wipefs failed" in ret["comment"]
    for devices in ("/dev/sdb", [], None):
        assert state({"pairvm_host.device_usage": probe}).pvs_usable("here", devices)["result"] is False


def test_ssh_keypair_generates_once(state, tmp_path):
    key = tmp_path / "id_ed25519"

    def keygen(argv):
        key.write_text("PRIVATE")
        (tmp_path / "id_ed25519.pub").write_text("ssh-ed25519 AAAA root@hostA\n")
        return done()

    commands = Commands({("ssh-keygen",): keygen})
    ret = state({"cmd.run_all": commands}, test=True).ssh_keypair(str(key), comment="root@hostA")
    assert ret["result"] is None and ret["changes"] == {"created": [str(key), f"{key}.pub"]}
    assert commands.calls == []
    ret = state({"cmd.run_all": commands}).ssh_keypair(str(key), comment="root@hostA")
    assert ret["result"] is True and ret["changes"] == {"created": [str(key), f"{key}.pub"]}
    assert commands.calls == [
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key), "-C", "root@hostA"]]
    ret = state({"cmd.run_all": commands}).ssh_keypair(str(key), comment="root@hostA")
    assert ret == {"name": str(key), "result": True, "changes": {}, "comment": f"key pair {key} exists"}


def test_ssh_keypair_derives_a_missing_public_key(state, tmp_path):
    key = tmp_path / "id_ed25519"
    key.write_text("PRIVATE")
    commands = Commands({("ssh-keygen", "-y"): done("ssh-ed25519 AAAA\n")})
    ret = state({"cmd.run_all": commands}).ssh_keypair(str(key), comment="root@hostA")
    assert ret["changes"] == {"public key": f"{key}.pub"}
    assert (tmp_path / "id_ed25519.pub").read_text() == "ssh-ed25519 AAAA root@hostA\n"
    assert stat.S_IMODE((tmp_path / "id_ed25519.pub").stat().st_mode) == 0o644


def test_mine_published_sends_only_when_it_changed(state):
    identity = {"user_key": "ssh-ed25519 AAAA root@hostA", "host_key": "ssh-ed25519 BBBB"}
    salt = {"pairvm_host.ssh_identity": mock.Mock(return_value=identity),
            "mine.get": mock.Mock(return_value={}), "mine.send": mock.Mock(return_value=True)}
    args = {"key_file": "/root/.ssh/id_ed25519"}
    pair = ["hostA", "hostB"]
    ret = state(salt, test=True).mine_published("pairvm_ssh", "pairvm_host.ssh_identity", args, pair)
    assert ret["result"] is None and ret["changes"] == {"old": None, "new": identity}
    salt["mine.send"].assert_not_called()
    ret = state(salt).mine_published("pairvm_ssh", "pairvm_host.ssh_identity", args, pair)
    assert ret["result"] is True and ret["changes"] == {"old": None, "new": identity}
    salt["mine.send"].assert_called_once_with(
        "pairvm_ssh", key_file="/root/.ssh/id_ed25519", mine_function="pairvm_host.ssh_identity",
        allow_tgt=["hostA", "hostB"], allow_tgt_type="list")
    salt["mine.get"].assert_called_with("hostA", "pairvm_ssh")
    salt["mine.get"].return_value = {"hostA": identity}
    ret = state(salt).mine_published("pairvm_ssh", "pairvm_host.ssh_identity", args, pair)
    assert ret == {"name": "pairvm_ssh", "result": True, "changes": {},
                   "comment": "mine entry pairvm_ssh is up to date"}
    assert salt["mine.send"].call_count == 1


def test_mine_published_failures(state):
    salt = {"pairvm_host.ssh_identity": mock.Mock(side_effect=SaltInvocationError("bad key")),
            "mine.get": mock.Mock(return_value={}), "mine.send": mock.Mock(return_value=False)}
    assert state(salt).mine_published("pairvm_ssh", "nope.nothing")["result"] is False
    ret = state(salt).mine_published("pairvm_ssh", "pairvm_host.ssh_identity")
    assert ret["result"] is False and "bad key" in ret["comment"]
    salt["pairvm_host.ssh_identity"].side_effect = None
    salt["pairvm_host.ssh_identity"].return_value = {"user_key": "k"}
    ret = state(salt).mine_published("pairvm_ssh", "pairvm_host.ssh_identity")
    assert "mine.send pairvm_ssh failed" in ret["comment"]


def drbd_salt(options, managed_ret=None):
    managed = mock.Mock(
        return_value=managed_ret or {"name": "x", "result": True, "changes": {}, "comment": "ok"})
    return {"config.get": mock.Mock(return_value=options), "__states__": {"file.managed": managed}}, managed


@pytest.mark.parametrize("options, mode", [({}, "0644"), (None, "0644"), ({"shared_secret": "s3"}, "0600")])
def test_drbd_global_common_writes_the_pairvm_text(state, tmp_path, options, mode):
    salt, managed = drbd_salt(options)
    path = str(tmp_path / "global_common.conf")
    state(salt).drbd_global_common(path)
    managed.assert_called_once_with(name=path, contents=render.drbd_global_common(options), user="root",
                                    group="root", mode=mode, check_cmd="drbdadm dump all -c")


@pytest.mark.parametrize("test", [False, True])
def test_drbd_global_common_with_secret_makes_resource_files_root_only(state, tmp_path, test):
    (tmp_path / "vm1.res").write_text("x")
    (tmp_path / "vm1.res").chmod(0o644)
    (tmp_path / "vm2.res").write_text("x")
    (tmp_path / "vm2.res").chmod(0o600)
    salt, _ = drbd_salt({"shared_secret": "s3"})
    ret = state(salt, test=test).drbd_global_common(str(tmp_path / "global_common.conf"))
    assert ret["changes"] == {"mode 0600 (shared secret)": [str(tmp_path / "vm1.res")]}
    assert ret["result"] is (None if test else True)
    assert stat.S_IMODE((tmp_path / "vm1.res").stat().st_mode) == (0o644 if test else 0o600)


def test_drbd_global_common_fails_clearly(state):
    salt, managed = drbd_salt({"resync_rate": "1X"})
    ret = state(salt).drbd_global_common()
    assert ret["result"] is False
    assert ret["comment"].startswith("pillar pairvm:drbd_options: options.resync_rate: '1X'")
    managed.assert_not_called()


def test_autostart_disabled(state, tmp_path):
    links = [str(tmp_path / "web1.xml"), str(tmp_path / "db1.xml")]
    for link in links:
        os.symlink("/nowhere", link)
    (tmp_path / "other.xml").symlink_to("/nowhere")
    commands = Commands({("virsh",): done(retcode=1, stderr="failed to connect")})
    salt = {"pairvm_host.autostart_links": mock.Mock(return_value=links), "cmd.run_all": commands}
    ret = state(salt, test=True).autostart_disabled(str(tmp_path), vms=["web1"])
    assert ret["result"] is None and ret["changes"] == {"removed": links} and commands.calls == []
    ret = state(salt).autostart_disabled(str(tmp_path), vms=["web1"])
    assert ret["result"] is True and ret["changes"] == {"removed": links}
    assert commands.calls[0] == ["virsh", "-q", "-c", "qemu:///system", "autostart", "--disable", "web1"]
    assert not any(os.path.lexists(link) for link in links) and (tmp_path / "other.xml").is_symlink()
    salt["pairvm_host.autostart_links"].return_value = []
    assert state(salt).autostart_disabled(str(tmp_path))["changes"] == {}


PAIRVM_IF = "/etc/network/interfaces.d/pairvm"


def ifupdown(up=(), known=("eth0", "eth1", "br0"), ifup_rc=0, comes_up=True):
    configured = set(up)

    def ifquery(argv):
        if argv[1] == "--state":
            return done(f"{argv[2]}={argv[2]}") if argv[2] in configured else done(retcode=1)
        return done() if argv[1] in known else done(retcode=1, stderr=f"ifquery: unknown interface {argv[1]}")

    def ifup(argv):
        if comes_up:
            configured.update(argv[1:])
        return done(retcode=ifup_rc, stderr="" if not ifup_rc else "RTNETLINK answers: File exists")

    return Commands({("ifquery",): ifquery, ("ifup",): ifup})


def test_interfaces_up_brings_up_what_is_down_once(state):
    commands = ifupdown(up=["eth0"])
    ret = state({"cmd.run_all": commands}, test=True).interfaces_up(PAIRVM_IF, ["eth0", "eth1", "br0"])
    assert ret["result"] is None and ret["changes"] == {"ifup": ["eth1", "br0"]}
    assert not any(argv[0] == "ifup" for argv in commands.calls)
    ret = state({"cmd.run_all": commands}).interfaces_up(PAIRVM_IF, ["eth0", "eth1", "br0"])
    assert ret["result"] is True and ret["changes"] == {"ifup": ["eth1", "br0"]}
    assert ["ifup", "eth1", "br0"] in commands.calls
    ret = state({"cmd.run_all": commands}).interfaces_up(PAIRVM_IF, ["eth0", "eth1", "br0"])
    assert ret["result"] is True and ret["changes"] == {}


def test_interfaces_up_fails_when_the_file_is_not_sourced_or_ifup_fails(state):
    ret = state({"cmd.run_all": ifupdown(known=("eth0",))}).interfaces_up("/etc/network/interfaces.d/pairvm",
                                                                          ["eth0", "br0"])
    assert ret["result"] is False
    assert ret["comment"] == ("br0 not in ifupdown's configuration: /etc/network/interfaces must include "
                              "/etc/network/interfaces.d/pairvm (a line `source /etc/network/interfaces.d/*` "
                              "or `source /etc/network/interfaces.d/pairvm`)")
    ret = state({"cmd.run_all": ifupdown(ifup_rc=1, comes_up=False)}).interfaces_up("/f", ["eth0"])
    assert ret["result"] is False and "File exists" in ret["comment"] and ret["changes"] == {}


LINE = 'from="192.0.2.12",no-pty ssh-ed25519 AAAA root@hostB'


def test_peer_key_authorized_creates_replaces_in_place_and_keeps_other_keys(state, tmp_path):
    path = tmp_path / "authorized_keys"
    ret = state({}, test=True).peer_key_authorized(str(path), LINE)
    assert ret["result"] is None and ret["changes"]["mode"] == "0600" and not path.exists()
    assert f"+{LINE}" in ret["changes"]["diff"]
    ret = state({}).peer_key_authorized(str(path), LINE)
    assert ret["result"] is True
    assert path.read_text() == f"{states.MARKER_START}\n{LINE}\n{states.MARKER_END}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_text("ssh-ed25519 OPERATOR admin@desk\n" + path.read_text() + "ssh-rsa LATER x@y\n")
    rotated = LINE.replace("AAAA", "CCCC")
    ret = state({}).peer_key_authorized(str(path), rotated)
    assert ret["changes"]["diff"].count("\n-") == 1 and "mode" not in ret["changes"]
    assert path.read_text().splitlines() == ["ssh-ed25519 OPERATOR admin@desk", states.MARKER_START, rotated,
                                             states.MARKER_END, "ssh-rsa LATER x@y"]
    ret = state({}).peer_key_authorized(str(path), rotated)
    assert ret == {"name": str(path), "result": True, "changes": {},
                   "comment": f"{path} authorizes the peer's key"}
    path.chmod(0o644)
    assert state({}).peer_key_authorized(str(path), rotated)["changes"] == {"mode": "0600"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_peer_key_authorized_refuses_bad_input(state, tmp_path):
    assert state({}).peer_key_authorized(str(tmp_path / "a"), LINE + "\nssh-rsa X")["result"] is False
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    assert state({}).peer_key_authorized(str(tmp_path / "link"), LINE)["result"] is False


def test_interfaces_up_test_mode_before_the_file_exists_reports_instead_of_failing(state):
    ret = state({"cmd.run_all": ifupdown(known=())}, test=True).interfaces_up(PAIRVM_IF, ["eth0", "br0"])
    assert ret["result"] is None and ret["changes"] == {"ifup": ["eth0", "br0"]}
    assert "not in ifupdown's configuration yet" in ret["comment"]
