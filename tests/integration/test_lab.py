"""The lab pair end to end: a real master, two real minions, libvirtd per host."""

import json
import time

import pytest
import yaml

from tests.lab.hosts import REPO

GUEST = REPO / ".cache" / "guest"
MARKER = "PAIRVM-GUEST-READY"


def test_both_minions_answer_through_the_admin_link(salt_cli):
    ret = salt_cli.run("test.ping", minion_tgt="*")
    assert ret.returncode == 0, ret
    assert ret.data == {"hostA": True, "hostB": True}


def test_each_minion_runs_inside_its_own_host(salt_cli):
    ret = salt_cli.run("cmd.run", "uname -n", minion_tgt="*")
    assert ret.data == {"hostA": "hostA", "hostB": "hostB"}
    ret = salt_cli.run("network.ip_addrs", "eth0", minion_tgt="*")
    assert ret.data == {"hostA": ["10.77.0.11"], "hostB": ["10.77.0.12"]}


@pytest.mark.parametrize(
    "path",
    [
        "salt://pillar/pairvm.sls",
        "salt://pillar/top.sls",
        "salt://../pillar/pairvm.sls",
        "salt://pairvm/../../pillar/pairvm.sls",
        "salt://%2e%2e/pillar/pairvm.sls",
    ],
)
def test_the_file_server_does_not_serve_pillar(salt_cli, path):
    ret = salt_cli.run("cp.get_file_str", path, minion_tgt="hostA")
    # the minion answered (a minion that did not would give no False) and found nothing
    assert ret.returncode == 0 and ret.data is False, f"{path}: {ret!r}"


def test_the_file_server_serves_the_formula(salt_cli):
    """The positive control of the test above: a file the master does serve arrives."""
    ret = salt_cli.run("cp.get_file_str", "salt://pairvm/init.sls", minion_tgt="hostA")
    assert ret.returncode == 0
    assert ret.data == (REPO / "salt" / "pairvm" / "init.sls").read_text()


def test_no_pillar_file_is_listed_by_the_file_server(salt_cli):
    ret = salt_cli.run("cp.list_master", minion_tgt="hostA")
    assert ret.returncode == 0, ret
    assert "pairvm/init.sls" in ret.data
    # _pillar/ holds the ext_pillar module (code); no pillar data is served.
    assert not [p for p in ret.data if p.split("/")[0] == "pillar" or p == "pairvm.sls"], ret.data


def test_custom_modules_arrive_through_sync_all(salt_cli, salt_run_cli):
    ret = salt_cli.run("sys.list_functions", "pairvm", minion_tgt="hostA")
    assert {"pairvm.list", "pairvm.check_system"} <= set(ret.data)


@pytest.fixture(scope="module")
def set_up(salt_run_cli):
    """Both hosts set up (pairvm.orch.host), whatever other modules ran before: the health
    check and the host command need /machines/_global and the command installed."""
    ret = salt_run_cli.run("state.orchestrate", "pairvm.orch.host")
    assert ret.returncode == 0, ret
    return ret


def test_list_is_empty_on_a_fresh_pair(salt_cli):
    ret = salt_cli.run("pairvm.list", minion_tgt="*")
    assert ret.returncode == 0, ret
    for host in ("hostA", "hostB"):
        assert ret.data[host]["vms"] == []


def test_health_check_passes_on_both_hosts(set_up, salt_cli):
    ret = salt_cli.run("pairvm.check_system", minion_tgt="*")
    assert ret.returncode == 0, ret
    for host, report in ret.data.items():
        assert report["ok"], (host, report)
        assert "here" in report["checks"]["volume_groups"]["detail"]


def test_health_check_reports_a_missing_bridge(set_up, salt_cli, lab):
    host = lab.hosts["hostB"]
    host.run(["ip", "link", "set", "br0", "name", "br9"])
    try:
        ret = salt_cli.run("pairvm.check_system", minion_tgt="hostB")
        assert ret.returncode != 0
        assert ret.data["checks"]["bridge"] == {"ok": False,
                                                "detail": "bridge br0 does not exist (or is no bridge)"}
    finally:
        host.run(["ip", "link", "set", "br9", "name", "br0"])


def test_host_setup_converges_and_a_second_apply_changes_nothing(set_up, salt_cli, lab):
    view = json.loads(lab.hosts["hostA"].run(["cat", "/machines/_global"]).stdout)
    assert (view["me"], view["peer"]) == ("hostA", "hostB")
    assert json.loads(lab.hosts["hostB"].run(["cat", "/machines/_global"]).stdout)["me"] == "hostB"
    planned = salt_cli.run("state.apply", "pairvm", "test=True", minion_tgt="*").data
    assert set(planned) == {"hostA", "hostB"} and all(planned.values()), planned
    for states in planned.values():
        pending = [k for k, s in states.items() if s["changes"] or s["result"] is None]
        assert not pending, pending
    again = salt_cli.run("state.apply", "pairvm", minion_tgt="*")
    assert set(again.data) == {"hostA", "hostB"} and all(again.data.values()), again
    for host, states in again.data.items():
        changed = [k for k, s in states.items() if s["changes"]]
        assert not changed, (host, changed)


def test_host_setup_writes_network_drbd_and_peer_trust(set_up, salt_cli, lab):
    host = lab.hosts["hostA"]
    parsed = host.run(["ifquery", "-i", "/etc/network/interfaces.d/pairvm", "br0"]).stdout
    assert "bridge" in parsed and "pub0" in parsed
    common = host.run(["cat", "/etc/drbd.d/global_common.conf"]).stdout
    assert common == salt_cli.run("pairvm.drbd_common_config", minion_tgt="hostA").data
    assert "usage-count no" in common and "after-sb-2pri disconnect" in common
    keys = host.run(["cat", "/root/.ssh/authorized_keys"]).stdout
    assert 'from="10.77.0.12"' in keys
    # known_hosts is hashed: ask ssh-keygen for the peer's admin address.
    assert host.run(["ssh-keygen", "-F", "10.77.0.12", "-f", "/root/.ssh/known_hosts"]).stdout


def test_first_time_setup_checks_a_set_up_host(set_up, salt_cli, lab):
    out = lab.hosts["hostA"].run(["pairvm", "first_time_setup"])
    assert "state.apply pairvm.host" in out.stdout
    assert "FAIL" not in out.stdout, out.stdout
    lab.hosts["hostB"].run(["ip", "link", "set", "eth1", "down"])
    try:
        broken = lab.hosts["hostA"].run(["pairvm", "first_time_setup"], check=False)
    finally:
        lab.hosts["hostB"].run(["ip", "link", "set", "eth1", "up"])
    assert broken.returncode == 1 and "FAIL" in broken.stdout and "10.78.0.12" in broken.stdout


def test_host_command_prints_the_old_table(set_up, salt_cli, lab, minions):
    host = lab.hosts["hostA"]
    out = host.run(["/usr/local/sbin/pairvm", "list"]).stdout
    assert out.splitlines()[0].split() == [
        "NAME", "MEM", "DISC", "RUN", "WHERE", "VNC", "DRBD", "DISK", "MAC", "IP",
    ]
    # the VMs homed here, whatever other test modules left defined (none, normally)
    homed = [yaml.safe_load(path.read_text()) for path in (host.root / "machines").glob("*")
             if not path.name.startswith("_")]
    here = sum(record["memory"] for record in homed if record["home"] == "hostA")
    assert f"RAM here: {here} MiB" in out
    check = host.run(["/usr/local/sbin/pairvm", "check_system"])
    assert "host is ready for pairvm" in check.stdout
    assert "usage: pairvm list" in host.run(["/usr/local/sbin/pairvm", "help", "list"]).stdout


def test_lvs_shows_the_lvs_created_through_salt(salt_cli, lab):
    ret = salt_cli.run("lvm.lvcreate", "probe", "here", size="8M", minion_tgt="hostA")
    assert ret.returncode == 0, ret
    try:
        lvs = lab.hosts["hostA"].run(
            ["lvs", "--reportformat", "json", "-o", "lv_name,vg_name,lv_size", "--units", "m"]
        ).stdout
        rows = json.loads(lvs)["report"][0]["lv"]
        assert {"lv_name": "probe", "vg_name": "here", "lv_size": "8.00m"} in rows
        assert lab.hosts["hostA"].run(["test", "-b", "/dev/here/probe"]).returncode == 0
        # hostB has its own volume groups: the LV exists on hostA only.
        lvs_b = lab.hosts["hostB"].run(["lvs", "--reportformat", "json"]).stdout
        assert "probe" not in lvs_b
    finally:
        salt_cli.run("lvm.lvremove", "probe", "here", minion_tgt="hostA")


def _guest_xml(name):
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{GUEST / 'vmlinuz'}</kernel>
    <initrd>{GUEST / 'initrd.img'}</initrd>
    <cmdline>console=ttyS0 pairvm.hostname={name}</cmdline>
  </os>
  <features><acpi/></features>
  <on_reboot>destroy</on_reboot>
  <devices>
    <serial type='pty'>
      <log file='/var/log/libvirt/qemu/{name}-serial.log' append='off'/>
      <target port='0'/>
    </serial>
    <graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'/>
  </devices>
</domain>
"""


def _wait_for(host, path, text, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = host.run(["cat", path], check=False).stdout
        if text in out:
            return out
        time.sleep(0.5)
    raise AssertionError(f"[{host.name}] {text!r} not in {path} after {timeout}s: {out[-500:]}")


@pytest.mark.parametrize("host_name", ["hostA", "hostB"])
def test_the_test_guest_boots_under_libvirt_in_each_host(lab, host_name):
    host = lab.hosts[host_name]
    name = f"probe-{host_name.lower()}"
    xml = f"/var/lib/libvirt/{name}.xml"
    host.run(["tee", xml], input=_guest_xml(name))
    host.run(["virsh", "define", xml])
    try:
        host.run(["virsh", "start", name])
        log = _wait_for(host, f"/var/log/libvirt/qemu/{name}-serial.log", f"hostname: {name}")
        assert MARKER in log
        display = host.run(["virsh", "domdisplay", name]).stdout.strip()
        assert display.startswith("vnc://127.0.0.1:")
        host.run(["virsh", "destroy", name])
    finally:
        host.run(["virsh", "destroy", name], check=False)
        host.run(["virsh", "undefine", name], check=False)
