"""_modules/pairvm_host.py with Salt's loader mocked.

The commands are mocked here (their argv is checked); the real blkid, wipefs,
LVM, ssh-keygen and ifupdown run in tests/functional/test_host_*.py.
"""

import json
import os

import pytest

from pairvmlib import defaults, layout
from salt.exceptions import CommandExecutionError, SaltInvocationError
from tests.unit.conftest import Commands, done, load

mod = load("_modules/pairvm_host.py", "pairvm_host_mod")


@pytest.fixture
def module(loader_mock):
    def install(answers):
        commands = Commands(answers)
        loader_mock(mod, salt={"cmd.run_all": commands})
        return commands

    return install


def pvs_report(*rows):
    return json.dumps({"report": [{"pv": [{"pv_name": n, "vg_name": v} for n, v in rows]}]})


# --- execution module: device_usage -------------------------------------------------

@pytest.fixture
def block_device(monkeypatch):
    monkeypatch.setattr(mod, "_stat", lambda device: (True, True, os.makedev(7, 9)))
    monkeypatch.setattr(mod, "_sysfs", lambda real: ([], []))
    monkeypatch.setattr(mod, "_mounted", lambda rdev, real: [])


def test_device_usage_runs_read_only_probes_and_refuses_an_ext4(module, block_device):
    commands = module({
        ("blkid",): done("DEVNAME=/dev/loop9\nTYPE=ext4\nUSAGE=filesystem\n"),
        ("wipefs",): done(json.dumps({"signatures": [{"device": "loop9", "offset": "0x438",
                                                       "type": "ext4"}]})),
        ("pvs",): done(pvs_report()),
    })
    usage = mod.device_usage("/dev/loop9", vg="here")
    assert usage["verdict"] == {
        "usable": False, "state": "refused",
        "reason": "/dev/loop9 holds data: ext4 filesystem (signature at offset 0x438)"}
    assert commands.calls == [
        ["blkid", "-p", "-o", "export", "/dev/loop9"],
        ["wipefs", "--no-act", "--json", "/dev/loop9"],
        ["pvs", "--reportformat", "json", "-o", "pv_name,vg_name"],
    ]


def test_device_usage_blank_and_member(module, block_device):
    module({("blkid",): done(retcode=2), ("wipefs",): done(""), ("pvs",): done(pvs_report())})
    assert mod.pv_is_blank("/dev/loop9") is True
    module({("blkid",): done("TYPE=LVM2_member\n"),
            ("wipefs",): done(json.dumps({"signatures": [{"type": "LVM2_member", "offset": "0x218"}]})),
            ("pvs",): done(pvs_report(("/dev/loop9", "here")))})
    assert mod.device_usage("/dev/loop9", vg="here")["verdict"]["state"] == "member"
    assert mod.pv_is_blank("/dev/loop9") is False


def test_device_usage_ambivalent_blkid_is_data(module, block_device):
    module({("blkid",): done("", retcode=8), ("wipefs",): done(""), ("pvs",): done(pvs_report())})
    assert "ambivalent" in mod.device_usage("/dev/loop9", vg="here")["verdict"]["reason"]


def test_device_usage_probe_failure_raises(module, block_device):
    module({("blkid",): done(retcode=4, stderr="blkid: bad usage")})
    with pytest.raises(CommandExecutionError, match="blkid -p -o export /dev/loop9 failed .rc 4.: blkid"):
        mod.device_usage("/dev/loop9", vg="here")


@pytest.mark.parametrize("device", ["sdb", "/dev/sdb;rm", "/dev/../etc/passwd", "-f", None, "/dev/a b"])
def test_device_usage_refuses_a_path_outside_dev(module, device):
    module({})
    with pytest.raises(SaltInvocationError, match="not a device path under /dev"):
        mod.device_usage(device)


def test_device_usage_of_a_missing_device_runs_nothing(module, tmp_path):
    commands = module({})
    assert mod.device_usage("/dev/pairvm-no-such-disk", vg="here")["verdict"]["reason"] == \
        "/dev/pairvm-no-such-disk does not exist"
    assert commands.calls == []


# --- execution module: the rest -----------------------------------------------------

def test_interfaces_errors_become_salt_invocation_errors(module):
    module({})
    with pytest.raises(SaltInvocationError, match="network.admin.interface"):
        mod.interfaces({"admin": {"interface": "eth 0", "prefix": 24}}, "192.0.2.11", "198.51.100.11")


def test_ssh_identity_reads_both_keys(module, tmp_path):
    module({})
    key = f"ssh-ed25519 {utils_key()} root@hostA"
    (tmp_path / "id_ed25519.pub").write_text(key + "\n")
    (tmp_path / "host.pub").write_text(f"ssh-ed25519 {utils_key()} root@build-machine\n")
    assert mod.ssh_identity(str(tmp_path / "id_ed25519"), str(tmp_path / "host.pub")) == {
        "user_key": key, "host_key": f"ssh-ed25519 {utils_key()}"}
    assert mod.ssh_identity(str(tmp_path / "none"), str(tmp_path / "none.pub")) == {
        "user_key": None, "host_key": None}
    (tmp_path / "bad.pub").write_text("not a key\n")
    with pytest.raises(SaltInvocationError):
        mod.ssh_identity(str(tmp_path / "bad"), str(tmp_path / "host.pub"))


def utils_key():
    import base64
    return base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519" + b"\x01" * 36).decode()


def test_autostart_links_lists_only_pairvm_vms(module, tmp_path, monkeypatch):
    module({})
    monkeypatch.setattr(layout, "MACHINES_DIR", str(tmp_path / "machines"))
    machines, autostart = tmp_path / "machines", tmp_path / "autostart"
    machines.mkdir()
    autostart.mkdir()
    for name in ("web1", "_global", "cli-made"):
        (machines / name).write_text("x")
    for name in ("web1", "db1", "cli-made", "other-domain", "_global"):
        (autostart / f"{name}.xml").symlink_to(f"/etc/libvirt/qemu/{name}.xml")
    assert mod.pairvm_vm_names(["db1", "Bad!"]) == ["cli-made", "db1", "web1"]
    assert mod.autostart_links(["db1"], str(autostart)) == [
        str(autostart / f"{n}.xml") for n in ("cli-made", "db1", "web1")]


def test_defaults_are_the_librarys_and_a_fresh_copy():
    first = mod.defaults()
    assert first["bridge"] == "br0" and first["volume_groups"] == ["here", "there"]
    assert first["host"] == defaults.HOST and first["backup"] == defaults.BACKUP
    first["host"]["packages"].append("x")
    assert "x" not in mod.defaults()["host"]["packages"]


def test_backup_settings_validate_pillar_and_name_each_job(loader_mock):
    job = {"vms": ["vm1", "vm2"], "destination": "bk@store:/b/_NAME.gz", "cron": "30 2 * * *"}
    pillar = {"speed": 0, "schedule": {"nightly": job}}
    loader_mock(mod, salt={"config.get": lambda key, default=None: pillar})
    settings = mod.backup_settings()
    assert settings["speed"] == 0 and settings["key"] == defaults.BACKUP["key"]
    assert settings["schedule"] == {"nightly": {"name": "vm1,vm2", "destination": "bk@store:/b/_NAME.gz",
                                                "speed": 0, "compress": "gzip", "cron": "30 2 * * *"}}
    pillar["schedule"]["nightly"]["cron"] = "nightly"
    with pytest.raises(SaltInvocationError, match="backup.schedule.nightly: cron: must be five cron fields"):
        mod.backup_settings()


def test_commands_describe_the_host_command_for_its_completion():
    spec = mod.commands()
    assert spec["vm_name_re"] == "^[a-z][a-z0-9-]{0,11}$"
    assert spec["commands"]["start"] == {"vm": True, "all": False, "commands": False,
                                         "flags": ["--away", "--disconnected"], "words": [], "files": False}
    assert spec["commands"]["backup"]["all"] is True
    assert spec["commands"]["cdrom"]["words"] == ["eject"] and spec["commands"]["cdrom"]["files"]
