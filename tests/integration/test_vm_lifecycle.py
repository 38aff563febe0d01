"""The VM lifecycle across the pair, from the master, as an operator runs it."""

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

import salt.utils.yaml
from tests.lab.productdrbd import drbd as product_drbd

GUEST_BOOT = {
    "kernel": "/var/lib/libvirt/boot/pairvm-guest-vmlinuz",
    "initrd": "/var/lib/libvirt/boot/pairvm-guest-initrd.img",
    "cmdline": "console=ttyS0",
}
MARKER = "PAIRVM-GUEST-READY"
HOSTS = ("hostA", "hostB")


def hv(name):
    return {**GUEST_BOOT, "cmdline": f"console=ttyS0 pairvm.hostname={name}"}


def wait_for(check, what, timeout=60, interval=0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def serial_log(host, name):
    return host.run(["cat", f"/var/log/libvirt/qemu/{name}-serial.log"], check=False).stdout


def boots(host, name):
    """How many times the guest reached its marker (the serial log is appended to)."""
    return serial_log(host, name).count(MARKER)


def start_and_wait(salt_cli, host, name, *args):
    """Start a VM with pairvm.start and wait for this boot's marker."""
    before = boots(host, name)
    ret = salt_cli.run("pairvm.start", name, *args, minion_tgt=host.name)
    assert ret.returncode == 0, ret
    wait_for(lambda: boots(host, name) > before, f"{name} to boot on {host.name}", timeout=90)
    return ret


def drbd(salt_cli, host, name):
    return salt_cli.run("drbd.status", name, minion_tgt=host).data


def in_sync(salt_cli, name):
    """Both hosts Connected and UpToDate/UpToDate, asked in one salt call (tests poll it: a
    salt CLI process costs about a CPU second)."""
    states = salt_cli.run("drbd.status", name, minion_tgt="host[AB]").data or {}
    return sorted(states) == sorted(HOSTS) and all(
        isinstance(s, dict) and s.get("connection") == "Connected" and s.get("disk") == "UpToDate"
        and s.get("peer_disk") == "UpToDate" for s in states.values())


def settled(lab, name, hosts=HOSTS):
    """Both hosts Connected and UpToDate/UpToDate, read with drbdsetup in the lab hosts and the
    product's parser (a wait condition: about 0.03 CPU s a look, where a salt CLI process
    costs about 1 s)."""
    for host in hosts:
        out = lab.hosts[host].run(["drbdsetup", "events2", "--now", name], check=False).stdout
        state = product_drbd._parse_events(out).get(name, {})
        if (state.get("connection"), state.get("disk"), state.get("peer_disk")) != \
                ("Connected", "UpToDate", "UpToDate"):
            return False
    return True


def wait_in_sync(lab, salt_cli, name, what=None, timeout=60):
    """Wait for ``settled``, then for salt's drbd.status to say so too (usually one call)."""
    what = what or f"{name} in sync"
    wait_for(lambda: settled(lab, name), what, timeout=timeout)
    wait_for(lambda: in_sync(salt_cli, name), f"{what} (drbd.status)", timeout=30)


def footprint(lab, name, hosts=HOSTS):
    """What exists of VM name on each host: LVs, resource file, /machines file, domain."""
    found = {}
    for host_name in hosts:
        host = lab.hosts[host_name]
        lvs = json.loads(host.run(["lvs", "--reportformat", "json", "-o", "lv_name,vg_name"]).stdout)
        found[host_name] = {
            "lvs": sorted(f"{r['vg_name']}/{r['lv_name']}" for r in lvs["report"][0]["lv"]
                          if r["lv_name"] == name),
            "res": host.run(["test", "-e", f"/etc/drbd.d/{name}.res"], check=False).returncode == 0,
            "machine": host.run(["test", "-e", f"/machines/{name}"], check=False).returncode == 0,
            "domain": host.run(["virsh", "dominfo", name], check=False).returncode == 0,
        }
    return found


NOTHING = {h: {"lvs": [], "res": False, "machine": False, "domain": False} for h in HOSTS}


def registry_path(salt_master):
    return Path(salt_master.config["cachedir"]) / "pairvm" / "pairs" / "default" / "registry.json"


def pair_state(lab, salt_master):
    """Everything pairvm keeps, by content: on each host every LV with its size, the bytes of
    every file under /machines and /etc/drbd.d, the XML of every libvirt domain; and the
    bytes of the master's registry. A refused request must leave all of it as it was."""
    state = {"registry": (registry_path(salt_master).read_bytes()
                          if registry_path(salt_master).exists() else None)}
    for name in HOSTS:
        host = lab.hosts[name]
        lvs = json.loads(host.run(["lvs", "--reportformat", "json", "-o", "vg_name,lv_name,lv_size",
                                   "--units", "m"]).stdout)["report"][0]["lv"]
        for row in lvs:
            state[f"{name}:lv {row['vg_name']}/{row['lv_name']}"] = row["lv_size"]
        for directory in ("machines", "etc/drbd.d"):
            for path in sorted((host.root / directory).glob("*")):
                if path.is_file():
                    state[f"{name}:/{directory}/{path.name}"] = path.read_bytes()
        for domain in host.run(["virsh", "list", "--all", "--name"]).stdout.split():
            state[f"{name}:domain {domain}"] = host.run(["virsh", "dumpxml", domain]).stdout
    return state


def changed(before, after):
    """The keys of pair_state whose content differs (or that came or went)."""
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def refusal(ret):
    """The text of a refused call: a runner's error, an execution function's message."""
    if isinstance(ret.data, dict) and "error" in ret.data:
        return ret.data["error"]
    return str(ret.data) + ret.stderr


NAME_RULE = "must be 1 to 12 characters: a lower-case letter, then lower-case letters, digits or hyphens"


def name_refused(name, why):
    """The name rule's message for ``name``, as a pattern: the rule, then what is wrong."""
    return rf"{re.escape(NAME_RULE)} .*got {re.escape(repr(name))} \({re.escape(why)}\)"


@pytest.fixture(autouse=True)
def every_resource_file_parses(lab):
    """After each test, the real drbdadm parses every resource file the product wrote,
    and its dry run of `up` prints the commands it would run."""
    yield
    for host in lab.hosts.values():
        if not host.run(["sh", "-c", "ls /etc/drbd.d/*.res 2>/dev/null"], check=False).stdout:
            continue
        host.run(["drbdadm", "dump", "all"])
        assert "drbdsetup-84 new-resource" in host.run(["drbdadm", "-d", "up", "all"]).stdout


@pytest.fixture(scope="module")
def pvm1(salt_run_cli, salt_cli, lab):
    """A VM created from the CLI with the runner, homed on hostA."""
    ret = salt_run_cli.run("pairvm.create", "pvm1", "hostA", "128", "64M", "state=stopped",
                           f"hypervisor_options={json.dumps(hv('pvm1'))}")
    assert ret.returncode == 0, ret
    wait_in_sync(lab, salt_cli, "pvm1")
    yield "pvm1"
    salt_run_cli.run("pairvm.destroy", "pvm1", "confirm=True", "force=True")


def test_runner_create_builds_both_hosts(pvm1, lab, salt_cli):
    assert footprint(lab, "pvm1") == {
        "hostA": {"lvs": ["here/pvm1"], "res": True, "machine": True, "domain": False},
        "hostB": {"lvs": ["there/pvm1"], "res": True, "machine": True, "domain": False},
    }
    a, b = (lab.hosts[h].run(["cat", "/machines/pvm1"]).stdout for h in HOSTS)
    assert a == b
    for host in HOSTS:
        res = lab.hosts[host].run(["drbdadm", "dump", "pvm1"])
        assert "10.78.0.11" in res.stdout and "10.78.0.12" in res.stdout


ARP_LISTENER = """
import socket, sys, time
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
sock.bind(("br0", 0))
sock.settimeout(0.5)
print("listening", flush=True)  # bound: a frame sent from now on is heard
end = time.time() + float(sys.argv[1])
while time.time() < end:
    try:
        frame = sock.recv(64)
    except socket.timeout:
        continue
    if frame[28:32] == frame[38:42]:  # sender IP == target IP: gratuitous
        print(socket.inet_ntoa(frame[28:32]), frame[22:28].hex(":"), flush=True)
"""


def test_start_boots_the_guest_on_its_home_host(pvm1, lab, salt_cli):
    host = lab.hosts["hostA"]
    # hostB listens on its br0 (joined to hostA's) for the start's gratuitous ARP.
    listener = subprocess.Popen(lab.hosts["hostB"].argv(["/usr/bin/python3", "-c", ARP_LISTENER, "30"]),
                                stdout=subprocess.PIPE, text=True)
    assert listener.stdout.readline() == "listening\n"  # before the start that sends the ARP
    start_and_wait(salt_cli, host, "pvm1")
    listener.terminate()
    heard = listener.communicate(timeout=10)[0]
    row = salt_cli.run("pairvm.list", "fields=ip,mac", minion_tgt="hostA").data["vms"][0]
    assert f"{row['ip']} {row['mac']}" in heard
    wait_for(lambda: "hostname: pvm1" in serial_log(host, "pvm1"), "the guest to take its hostname")
    listen = host.run(["ss", "-ltnH"]).stdout
    vnc = [ln.split()[3] for ln in listen.splitlines() if ":59" in ln.split()[3]]
    assert vnc and all(addr.startswith("127.0.0.1:") for addr in vnc), listen
    assert drbd(salt_cli, "hostA", "pvm1")["role"] == "Primary"


def test_start_on_the_away_host_needs_away(pvm1, lab, salt_cli):
    salt_cli.run("pairvm.stop", "pvm1", minion_tgt="hostA")
    refused = salt_cli.run("pairvm.start", "pvm1", minion_tgt="hostB")
    assert refused.returncode != 0
    assert "home is hostA" in str(refused.data)
    start_and_wait(salt_cli, lab.hosts["hostB"], "pvm1", "away=True")
    rows = salt_cli.run("pairvm.list", minion_tgt="hostB").data["vms"]
    assert [(r["name"], r["running"], r["location"]) for r in rows] == [("pvm1", True, "away")]
    assert salt_cli.run("pairvm.stop", "pvm1", minion_tgt="hostB").returncode == 0
    assert drbd(salt_cli, "hostB", "pvm1")["role"] == "Secondary"


def test_a_guest_reboot_stops_the_vm(pvm1, lab, salt_cli):
    host = lab.hosts["hostA"]
    start_and_wait(salt_cli, host, "pvm1")
    # Type `reboot` on the guest's serial console, through its pty as `virsh
    # console` does (raw mode; QEMU reads a pty only while a client holds it
    # open). Bytes sent while the guest is still settling can be dropped, so
    # it is typed again until the domain stops.
    tty = host.run(["virsh", "ttyconsole", "pvm1"]).stdout.strip()
    typing = ('exec 3<>"$1"; stty raw -echo <&3; i=0; while [ $i -lt 15 ]; do '
              'printf "\\nreboot\\n" >&3; sleep 2; virsh domstate pvm1 | grep -q "shut off" && exit 0; '
              'i=$((i+1)); done; exit 1')
    typed = host.run(["sh", "-c", typing, "sh", tty], check=False, timeout=60)
    assert typed.returncode == 0, serial_log(host, "pvm1")[-600:]
    assert "echo: reboot" in serial_log(host, "pvm1")
    assert salt_cli.run("pairvm.stop", "pvm1", minion_tgt="hostA").returncode == 0


def test_cdrom_insert_and_eject_on_a_running_vm(pvm1, lab, salt_cli):
    host = lab.hosts["hostA"]
    host.run(["sh", "-c", "mkdir -p /var/lib/libvirt/iso/src && echo hi > /var/lib/libvirt/iso/src/x && "
                          "genisoimage -quiet -o /var/lib/libvirt/iso/t.iso /var/lib/libvirt/iso/src"])
    assert salt_cli.run("pairvm.start", "pvm1", minion_tgt="hostA").returncode == 0
    try:
        ins = salt_cli.run("pairvm.cdrom", "pvm1", "iso=/var/lib/libvirt/iso/t.iso", minion_tgt="hostA")
        assert ins.returncode == 0, ins
        shown = salt_cli.run("pairvm.cdrom", "pvm1", minion_tgt="hostA").data
        assert shown["cdrom"] == "/var/lib/libvirt/iso/t.iso"
        blk = host.run(["virsh", "domblklist", "pvm1"]).stdout
        assert "/var/lib/libvirt/iso/t.iso" in blk
        ej = salt_cli.run("pairvm.cdrom", "pvm1", "eject=True", minion_tgt="hostA")
        assert ej.returncode == 0 and ej.data["cdrom"] is None
        assert "t.iso" not in host.run(["virsh", "domblklist", "pvm1"]).stdout
    finally:
        salt_cli.run("pairvm.stop", "pvm1", minion_tgt="hostA")


def test_resize_grows_the_disc_on_both_hosts_and_records_the_size(
        pvm1, lab, salt_cli, salt_run_cli, salt_master):
    before = pair_state(lab, salt_master)
    ret = salt_run_cli.run("pairvm.resize", "pvm1", "96M")
    assert ret.returncode == 0, ret
    after = pair_state(lab, salt_master)
    assert changed(before, after) == ["hostA:/machines/pvm1", "hostA:lv here/pvm1", "hostB:/machines/pvm1",
                                      "hostB:lv there/pvm1", "registry"]
    for host, vg in (("hostA", "here"), ("hostB", "there")):
        size = lab.hosts[host].run(["blockdev", "--getsize64", f"/dev/{vg}/pvm1"]).stdout
        assert int(size) == 96 * 2**20
    # the record, identical on both hosts, and the registry say 96; so does list
    assert after["hostA:/machines/pvm1"] == after["hostB:/machines/pvm1"]
    assert salt.utils.yaml.safe_load(after["hostA:/machines/pvm1"])["disc_mib"] == 96
    assert json.loads(after["registry"])["vms"]["pvm1"]["definition"]["disc_mib"] == 96
    for host in HOSTS:
        assert salt_cli.run("pairvm.list", "fields=disc", minion_tgt=host).data["vms"] == [
            {"name": "pvm1", "disc": 96}]
    assert salt_run_cli.run("pairvm.list").data["vms"][0]["disc"] == 96
    # the VM state writes /machines from pillar: it keeps the new size
    again = salt_cli.run("state.apply", "pairvm.vms", minion_tgt="*")
    assert set(again.data) == set(HOSTS), again
    assert all(states for states in again.data.values()), again.data
    assert pair_state(lab, salt_master) == after
    # a shrink is refused, by its rule, and changes nothing anywhere
    shrink = salt_cli.run("pairvm.resize", "pvm1", "32M", minion_tgt="hostA")
    assert shrink.returncode != 0
    assert "VM pvm1's disc is 96 MiB; shrinking it to 32 MiB would cut off data" in refusal(shrink)
    assert pair_state(lab, salt_master) == after


def test_pillar_and_orchestrate_bring_a_vm_up_and_reapply_changes_nothing(
        pvm1, pillar_vms, salt_run_cli, salt_cli, lab):
    pillar_vms({"pvm2": {"home": "hostB", "memory": 128, "disc": "64M", "hypervisor_options": hv("pvm2")}})
    ret = salt_run_cli.run("state.orchestrate", "pairvm.orch.apply")
    assert ret.returncode == 0, ret
    host = lab.hosts["hostB"]
    wait_for(lambda: boots(host, "pvm2") > 0, "pvm2 marker on hostB", timeout=90)
    wait_in_sync(lab, salt_cli, "pvm2")
    for view in HOSTS:
        rows = {r["name"]: r for r in salt_cli.run("pairvm.list", minion_tgt=view).data["vms"]}
        assert set(rows) == {"pvm1", "pvm2"}
        assert rows["pvm2"]["drbd_connection"] == "Connected" and rows["pvm2"]["drbd_disk"] == "UpToDate"
    again = salt_cli.run("state.apply", "pairvm.vms", minion_tgt="*")
    assert set(again.data) == set(HOSTS), again
    for states in again.data.values():
        assert any("pvm2" in k for k in states) and not [k for k, s in states.items() if s["changes"]], states
    # grow the pillar-defined pvm2: the registry keeps the size, so re-applying pillar (64M)
    # changes nothing, and verify warns until pillar says 96M
    assert salt_run_cli.run("pairvm.resize", "pvm2", "96M").returncode == 0
    assert salt_run_cli.run("pairvm.list").data["vms"][1]["disc"] == 96
    again = salt_cli.run("state.apply", "pairvm.vms", minion_tgt="*")
    assert set(again.data) == set(HOSTS), again
    for states in again.data.values():
        assert not [k for k, s in states.items() if s["changes"] or not s["result"]], states
    records = [lab.hosts[h].run(["cat", "/machines/pvm2"]).stdout for h in HOSTS]
    assert records[0] == records[1] and salt.utils.yaml.safe_load(records[0])["disc_mib"] == 96
    found = salt_run_cli.run("pairvm.verify").data["findings"]
    assert [(f["severity"], f["code"], f["vm"]) for f in found if f["code"] == "EDISCGROWN"] == [
        ("WARNING", "EDISCGROWN", "pvm2")], found
    host.run(["virsh", "destroy", "pvm2"])
    pending = salt_cli.run("state.apply", "pairvm.vms", "test=True", minion_tgt="hostB").data
    changes = {k.split("_|-")[1]: s["changes"] for k, s in pending.items() if s["changes"]}
    commands = changes.pop("pairvm-vms-pvm2-running")["commands"]
    assert not changes
    assert commands[0] == "virsh define <domain pvm2> && virsh start pvm2"
    assert commands[1].startswith("gratuitous ARP for 10.79.0.") and len(commands) == 2
    pillar_vms({})
    assert salt_run_cli.run("pairvm.destroy", "pvm2", "confirm=True", "force=True").returncode == 0
    assert footprint(lab, "pvm2") == NOTHING


@pytest.mark.parametrize("args, why", [
    (["bad;name", "hostA", "128", "64M"], name_refused("bad;name", "it contains ';'")),
    (["../etc", "hostA", "128", "64M"], name_refused("../etc", "it contains './'")),
    (["waytoolongname1", "hostA", "128", "64M"], name_refused("waytoolongname1", "it has 15")),
    (["pvm3", "hostC", "128", "64M"],
     re.escape("hostC is not a host of a pair: its pillar has no pairvm:pair naming it")),
    (["pvm3", "hostA", "lots", "64M"], re.escape("vm 'pvm3': memory: must be a whole number of MiB")),
    (["pvm3", "hostA", "128", "64Q"], re.escape("vm 'pvm3': disc: must be a whole number of MiB or a size")),
    (["pvm3", "hostA", "128", "64M", "ip=10.80.0.5"], re.escape("vm 'pvm3': ip: '10.80.0.5' is outside")),
    (["pvm3", "hostA", "4096", "64M"], "over the cap of 2048 MiB"),
])
def test_bad_input_is_refused_and_nothing_is_created(pvm1, salt_run_cli, salt_master, lab, args, why):
    before = pair_state(lab, salt_master)
    ret = salt_run_cli.run("pairvm.create", *args)
    assert ret.returncode != 0
    assert re.search(why, refusal(ret)), ret
    assert pair_state(lab, salt_master) == before


def test_an_ip_already_taken_is_refused(pvm1, salt_run_cli, salt_cli, salt_master, lab):
    taken = salt_cli.run("pairvm.list", minion_tgt="hostA").data["vms"][0]["ip"]
    before = pair_state(lab, salt_master)
    ret = salt_run_cli.run("pairvm.create", "pvm3", "hostB", "128", "64M", f"ip={taken}")
    assert ret.returncode != 0
    assert f"vm 'pvm3': ip: '{taken}' is already allocated to vm 'pvm1'" in refusal(ret)
    assert pair_state(lab, salt_master) == before


def test_runner_list_merges_both_hosts(pvm1, salt_run_cli):
    rows = salt_run_cli.run("pairvm.list").data["vms"]
    assert [(r["name"], r["disagreements"]) for r in rows] == [("pvm1", [])]
    assert set(rows[0]["drbd"]) == set(HOSTS)


def test_destroy_removes_everything_and_frees_the_allocation(salt_run_cli, salt_cli, lab):
    ret = salt_run_cli.run("pairvm.create", "pvm4", "hostB", "128", "64M")
    assert ret.returncode == 0, ret
    ip = salt_cli.run("pairvm.list", "fields=ip", minion_tgt="hostB").data["vms"]
    ip = {r["name"]: r["ip"] for r in ip}["pvm4"]
    refused = salt_run_cli.run("pairvm.destroy", "pvm4")
    assert refused.returncode != 0 and "confirm=True" in str(refused.data)
    assert salt_run_cli.run("pairvm.destroy", "pvm4", "confirm=True").returncode == 0
    assert footprint(lab, "pvm4") == NOTHING
    again = salt_run_cli.run("pairvm.create", "pvm5", "hostB", "128", "64M")
    assert again.returncode == 0, again
    rows = salt_cli.run("pairvm.list", "fields=ip", minion_tgt="hostB").data["vms"]
    assert {r["name"]: r["ip"] for r in rows}["pvm5"] == ip
    assert salt_run_cli.run("pairvm.destroy", "pvm5", "confirm=True").returncode == 0


def host_command(host, minions, *args, check=True):
    """The host command `pairvm` on a lab host (the state pairvm.config installed it for its minion)."""
    return host.run(["pairvm", *args], check=check)


def test_host_command_drives_a_vm(pvm1, lab, salt_cli, minions):
    host = lab.hosts["hostA"]
    salt_cli.run("state.apply", "pairvm", minion_tgt="hostA")  # installs the command
    before = boots(host, "pvm1")
    host_command(host, minions, "start", "pvm1")
    wait_for(lambda: boots(host, "pvm1") > before, "pvm1 boot via the host command")
    table = host_command(host, minions, "list").stdout
    row = next(ln.split() for ln in table.splitlines() if ln.startswith("pvm1 "))
    disc = salt.utils.yaml.safe_load(host.run(["cat", "/machines/pvm1"]).stdout)["disc_mib"]
    assert row[:5] == ["pvm1", "128", str(disc), "yes", "home"]
    assert "running" in host_command(host, minions, "monitor", "pvm1", "info status").stdout
    assert MARKER in host_command(host, minions, "serial", "pvm1", "--log", "50").stdout
    forwards = host_command(host, minions, "print_ssh_forwards").stdout
    assert "127.0.0.1:59" in forwards and "root@10.77.0.11" in forwards
    refused = host_command(host, minions, "destroy", "pvm1", check=False)
    assert refused.returncode == 2 and "--yes-really" in refused.stderr
    host_command(host, minions, "stop", "pvm1")
    assert host.run(["virsh", "domstate", "pvm1"]).stdout.strip() == "shut off"
    assert footprint(lab, "pvm1")["hostA"]["lvs"] == ["here/pvm1"]


@pytest.mark.parametrize("function, args, why", [
    ("pairvm.start", ["bad;name"], name_refused("bad;name", "it contains ';'")),
    ("pairvm.create", ["../etc"], name_refused("../etc", "it contains './'")),
    ("pairvm.destroy", ["pvm1"], re.escape("destroying VM pvm1 deletes its disc on this host: pass confirm")),
    # as a keyword: "-5G" alone is refused by the salt command line before pairvm sees it
    ("pairvm.resize", ["pvm1", "size=-5G"], re.escape("size: must be a whole number of MiB or a size like")),
    ("pairvm.cdrom", ["pvm1", "iso=../../etc/shadow"],
     re.escape("cdrom: '../../etc/shadow' is not an absolute path")),
    ("pairvm.start", ["nosuchvm"], re.escape("no VM nosuchvm on this host")),
])
def test_execution_functions_refuse_bad_input_and_change_nothing(
        pvm1, salt_cli, salt_master, lab, function, args, why):
    before = pair_state(lab, salt_master)
    assert "hostA:/machines/pvm1" in before and "hostA:lv here/pvm1" in before
    ret = salt_cli.run(function, *args, minion_tgt="hostA")
    assert ret.returncode != 0, ret
    assert re.search(why, refusal(ret)), ret
    assert pair_state(lab, salt_master) == before


def test_autostart_honours_suppress_and_brings_the_peers_drbd_up(salt_run_cli, salt_cli, lab):
    ret = salt_run_cli.run("pairvm.create", "pvm6", "hostA", "128", "64M", "state=running",
                           f"hypervisor_options={json.dumps(hv('pvm6'))}")
    assert ret.returncode == 0, ret
    try:
        wait_in_sync(lab, salt_cli, "pvm6")
        assert salt_cli.run("pairvm.suppress", "pvm6", minion_tgt="hostA").returncode == 0
        assert salt_cli.run("pairvm.autostart", minion_tgt="hostA").data["pvm6"]["changes"] == []
        assert salt_cli.run("pairvm.suppress", "pvm6", "on=False", minion_tgt="hostA").returncode == 0
        host = lab.hosts["hostA"]
        before = boots(host, "pvm6")
        started = salt_cli.run("pairvm.autostart", minion_tgt="hostA").data["pvm6"]["changes"]
        assert "drbdadm primary pvm6" in started
        wait_for(lambda: boots(host, "pvm6") > before, "pvm6 boot by autostart")
        assert salt_cli.run("drbd.down", "pvm6", minion_tgt="hostB").returncode == 0
        peer = salt_cli.run("pairvm.autostart", minion_tgt="hostB").data["pvm6"]
        assert peer["changes"] == ["drbdadm up pvm6"]
        wait_for(lambda: drbd(salt_cli, "hostB", "pvm6").get("connection") == "Connected", "pvm6 reconnect")
    finally:
        salt_run_cli.run("pairvm.destroy", "pvm6", "confirm=True", "force=True")
    assert footprint(lab, "pvm6") == NOTHING
