"""Live migration between the lab hosts, as an operator runs it.

Real libvirtd on each host migrates a real QEMU guest peer-to-peer: libvirt
reaches the peer's libvirtd through the real sshd the lab runs on the peer's
admin address (root's keys and known_hosts as the host state pairvm.host.ssh set them up),
QEMU sends the memory over TCP on the admin link. The DRBD window runs the
real drbdadm against the DRBD shim (tests/lab/drbdshim): the shim, not a
kernel, carries the dual-primary state and the replication link.
"""

import json
import re
import threading

import pytest

import salt.utils.yaml
from tests.integration.test_vm_lifecycle import (
    HOSTS,
    boots,
    drbd,
    hv,
    in_sync,
    serial_log,
    wait_for,
    wait_in_sync,
)
from tests.lab.drbdshim import state as drbdshim

NAME = "mvm1"


@pytest.fixture(scope="module")
def trusted_pair(salt_run_cli, salt_cli):
    """Both hosts set up (/machines/_global, root's SSH trust, the host command)."""
    ret = salt_run_cli.run("state.orchestrate", "pairvm.orch.host")
    assert ret.returncode == 0, ret


@pytest.fixture(scope="module")
def vm(trusted_pair, salt_run_cli, salt_cli, lab):
    """A VM homed on hostA, running there; stopped and destroyed at the end."""
    options = hv(NAME)
    options["cmdline"] += " pairvm.counter=1"  # the guest counts and writes its disc (tests/guest)
    ret = salt_run_cli.run("pairvm.create", NAME, "hostA", "128", "64M", "state=stopped",
                           f"hypervisor_options={json.dumps(options)}")
    assert ret.returncode == 0, ret
    wait_in_sync(lab, salt_cli, NAME)
    yield NAME
    salt_run_cli.run("pairvm.destroy", NAME, "confirm=True", "force=True")


def running_on(lab):
    return [h for h in HOSTS
            if lab.hosts[h].run(["virsh", "domstate", NAME], check=False).stdout.strip() == "running"]


def window_open(lab):
    """Hosts whose kernel (the shim) has allow-two-primaries for the resource."""
    return [h for h in HOSTS
            if re.search(r"allow-two-primaries\s+yes", lab.hosts[h].run(["drbdsetup", "show", NAME]).stdout)]


def roles(salt_cli):
    return {h: drbd(salt_cli, h, NAME).get("role") for h in HOSTS}


def ensure_running_on_home(salt_cli, salt_run_cli, lab):
    """Every test starts with the VM running on hostA only, single-primary."""
    if window_open(lab) and len(running_on(lab)) == 1:  # left by a test that failed midway
        assert salt_run_cli.run("pairvm.migrate", NAME, "cleanup=True").returncode == 0
    where = running_on(lab)
    if where == ["hostB"]:
        assert salt_run_cli.run("pairvm.migrate", NAME).returncode == 0
    elif where != ["hostA"]:
        for host in where:
            salt_cli.run("pairvm.stop", NAME, minion_tgt=host)
        wait_in_sync(lab, salt_cli, NAME)
        before = boots(lab.hosts["hostA"], NAME)
        assert salt_cli.run("pairvm.start", NAME, minion_tgt="hostA").returncode == 0
        wait_for(lambda: boots(lab.hosts["hostA"], NAME) > before, f"{NAME} boot", timeout=90)
    assert running_on(lab) == ["hostA"] and window_open(lab) == []


def counts(host):
    """The guest's counts on its serial port, as this host's serial log has them."""
    return [int(n) for n in re.findall(r"^count: (\d+)\r?$", serial_log(host, NAME), re.MULTILINE)]


def disc_counts(host):
    """The counts the guest wrote into its disc (the first MiB), read through DRBD on ``host``."""
    dev = f"/dev/drbd{salt.utils.yaml.safe_load(host.run(['cat', f'/machines/{NAME}']).stdout)['drbd_minor']}"
    data = host.run(["sh", "-c", f"head -c 1048576 {dev} | sha256sum; "
                                 f"head -c 1048576 {dev} | tr -c 'a-z0-9 -' '\\n'"]).stdout
    return data.split()[0], [int(n) for n in re.findall(r"pairvm-count (\d+)", data)]


def verify_codes(salt_run_cli):
    """The codes salt-run pairvm.verify reports about the test's VM: {(code, host)}."""
    ret = salt_run_cli.run("pairvm.verify", "--out=json")
    return {(f["code"], f["host"]) for f in ret.data["findings"] if f["vm"] == NAME}


def type_line(host, text):
    """Type a line on the guest's serial console; wait for the guest's echo of it."""
    tty = host.run(["virsh", "ttyconsole", NAME]).stdout.strip()
    typing = ('exec 3<>"$1"; stty raw -echo <&3; i=0; while [ $i -lt 15 ]; do '
              'printf "\\n%s\\n" "$2" >&3; sleep 1; grep -q "echo: $2" "$3" && exit 0; i=$((i+1)); '
              'done; exit 1')
    typed = host.run(["sh", "-c", typing, "sh", tty, text, f"/var/log/libvirt/qemu/{NAME}-serial.log"],
                     check=False, timeout=60)
    assert typed.returncode == 0, console_tail(serial_log(host, NAME))


def console_tail(log):
    """The end of a serial log; when the guest kernel oopsed, all of it from the oops on."""
    oops = re.search(r"^.*(BUG:|Oops|general protection fault|Kernel panic).*$", log, re.MULTILINE)
    return log[oops.start():][:12000] if oops else log[-600:]


def test_a_stopped_vm_is_refused_and_nothing_changes(vm, salt_cli, lab):
    ret = salt_cli.run("pairvm.migrate", NAME, "away=True", minion_tgt="hostA")
    assert ret.returncode != 0
    assert f"VM {NAME} is not running on hostA" in str(ret.data)
    assert roles(salt_cli) == {"hostA": "Secondary", "hostB": "Secondary"}
    assert running_on(lab) == [] and window_open(lab) == []


def test_moving_away_from_home_needs_away_and_test_lists_the_window(vm, salt_cli, salt_run_cli, lab):
    ensure_running_on_home(salt_cli, salt_run_cli, lab)
    refused = salt_cli.run("pairvm.migrate", NAME, minion_tgt="hostA")
    assert refused.returncode != 0 and "pass away=True" in str(refused.data)
    planned = salt_cli.run("pairvm.migrate", NAME, "away=True", "test=True", minion_tgt="hostA")
    assert planned.returncode == 0, planned
    steps = planned.data["changes"]
    assert steps[0] == f"drbdadm net-options --allow-two-primaries=yes {NAME}"
    assert steps[2] == f"ssh root@10.77.0.12 drbdadm primary {NAME}"
    assert steps[3].startswith(f"virsh migrate --live --p2p --persistent --undefine-source {NAME} "
                               "qemu+ssh://root@10.77.0.12/system --migrateuri tcp://10.77.0.12")
    assert steps[-1] == f"drbdsetup show {NAME} on both hosts: no allow-two-primaries"
    assert running_on(lab) == ["hostA"] and window_open(lab) == []
    assert roles(salt_cli) == {"hostA": "Primary", "hostB": "Secondary"}


def test_live_migration_away_and_back_keeps_the_guest_running(vm, salt_cli, salt_run_cli, lab):
    ensure_running_on_home(salt_cli, salt_run_cli, lab)
    a, b = lab.hosts["hostA"], lab.hosts["hostB"]
    type_line(a, "before-the-move")
    wait_for(lambda: counts(a), "the guest to count")
    boots_a, boots_b, before = boots(a, NAME), boots(b, NAME), counts(a)[-1]
    ret = salt_run_cli.run("pairvm.migrate", NAME, "away=True")
    assert ret.returncode == 0, ret
    figures = ret.data["hostA"]["migration"]
    assert figures["time_ms"] > 0 and figures["downtime_ms"] >= 0, figures
    assert running_on(lab) == ["hostB"]
    # The same guest goes on: it answers there, booted no more, and counts on from
    # where it was (its memory came along).
    type_line(b, "after-the-move")
    assert boots(b, NAME) == boots_b and boots(a, NAME) == boots_a
    wait_for(lambda: len(counts(b)) > 3, "the guest to count on hostB")
    assert counts(b)[0] > before and counts(b) == sorted(counts(b)), (before, counts(b)[:5])
    # Its disc writes went on too, and both hosts read the same bytes (the DRBD shim
    # shares one block device while Connected: the shim carries that claim). The guest is
    # paused meanwhile (QEMU drains its disc I/O): it writes five times a second.
    b.run(["virsh", "suspend", NAME])
    try:
        sums, written = zip(*(disc_counts(h) for h in (a, b)), strict=True)
    finally:
        b.run(["virsh", "resume", NAME])
    assert sums[0] == sums[1] and max(written[1]) > before, (sums, before)
    assert roles(salt_cli) == {"hostA": "Secondary", "hostB": "Primary"}
    assert window_open(lab) == [] and in_sync(salt_cli, NAME)
    assert verify_codes(salt_run_cli) == {("EVMAWAY", "hostB")}
    views = salt_cli.run("pairvm.list", minion_tgt="*").data
    assert {h: [r["running"] for r in views[h]["vms"] if r["name"] == NAME] for h in HOSTS} == \
        {"hostA": [False], "hostB": [True]}
    # The domain is defined where it runs now, and gone from where it ran.
    assert a.run(["virsh", "dominfo", NAME], check=False).returncode != 0
    assert "Persistent:     yes" in b.run(["virsh", "dominfo", NAME]).stdout
    # Back home with the host command on hostB (no --away: hostA is its home).
    out = b.run(["pairvm", "swaplive", NAME])
    assert "downtime" in out.stdout, out.stdout
    assert f"migrate {NAME}: " in out.stderr, out.stderr  # the progress line on the terminal
    assert running_on(lab) == ["hostA"] and window_open(lab) == []
    type_line(a, "home-again")
    assert boots(a, NAME) == boots_a
    assert roles(salt_cli) == {"hostA": "Primary", "hostB": "Secondary"}


def test_a_maintenance_round_moves_the_vm_away_and_back(vm, salt_cli, salt_run_cli, lab):
    ensure_running_on_home(salt_cli, salt_run_cli, lab)
    a = lab.hosts["hostA"]
    boots_a = boots(a, NAME)
    ret = salt_run_cli.run("state.orchestrate", "pairvm.orch.maintenance",
                           'pillar={"host": "hostA", "sls": "pairvm.config"}')
    assert ret.returncode == 0, ret
    steps = ret.data["data"]["master"]
    assert [s["__id__"] for s in sorted(steps.values(), key=lambda s: s["__run_num__"])] == [
        "pairvm-orch-maintenance-evacuate", "pairvm-orch-maintenance-apply", "pairvm-orch-maintenance-return"]
    assert all(s["result"] for s in steps.values()), steps
    assert running_on(lab) == ["hostA"] and window_open(lab) == [] and boots(a, NAME) == boots_a
    assert roles(salt_cli) == {"hostA": "Primary", "hostB": "Secondary"}


def migrate_in_background(salt_cli, *args):
    """pairvm.migrate in a thread. The CLI object keeps each call's target and output
    format on itself: no other call through it until the thread is joined."""
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault(
        "ret", salt_cli.run("pairvm.migrate", NAME, "away=True", *args, minion_tgt="hostA")))
    thread.start()
    return thread, result


def incoming_on_b(lab):
    return lab.hosts["hostB"].run(["virsh", "domstate", NAME], check=False).stdout.strip() == "paused"


def test_a_replication_link_cut_mid_migration_aborts_and_reverts(vm, salt_cli, salt_run_cli, lab):
    ensure_running_on_home(salt_cli, salt_run_cli, lab)
    thread, result = migrate_in_background(salt_cli, "bandwidth=1")
    try:
        wait_for(lambda: incoming_on_b(lab), "the incoming domain on hostB", timeout=60, interval=0.2)
        drbdshim.set_link(NAME, False)
        thread.join(timeout=120)
    finally:
        drbdshim.set_link(NAME, True)
    ret = result["ret"]
    assert ret.returncode != 0 and "became" in str(ret.data) and "undone" in str(ret.data), ret
    assert running_on(lab) == ["hostA"]
    assert lab.hosts["hostB"].run(["virsh", "domstate", NAME], check=False).returncode != 0
    assert roles(salt_cli) == {"hostA": "Primary", "hostB": "Secondary"}
    assert window_open(lab) == []
    type_line(lab.hosts["hostA"], "still-here")
    # Both were Primary when the link went: DRBD 8.4 then sees a split brain; hostB, which
    # never ran the VM, is the victim (its copy has no changes of its own).
    wait_for(lambda: drbd(salt_cli, "hostB", NAME).get("connection") in ("StandAlone", "Connected"),
             "hostB to reconnect or give up")
    if not in_sync(salt_cli, NAME):
        ret = salt_run_cli.run("pairvm.split_brain_victim", NAME, "hostB", "snapshot=False")
        assert ret.returncode == 0, ret
        if drbd(salt_cli, "hostA", NAME).get("connection") == "StandAlone":
            salt_cli.run("drbd.connect", NAME, minion_tgt="hostA")
    wait_in_sync(lab, salt_cli, NAME, f"{NAME} in sync again", timeout=60)


def test_the_destination_libvirtd_killed_mid_migration(vm, salt_cli, salt_run_cli, lab):
    ensure_running_on_home(salt_cli, salt_run_cli, lab)
    b = lab.hosts["hostB"]
    thread, result = migrate_in_background(salt_cli, "bandwidth=1")
    try:
        wait_for(lambda: incoming_on_b(lab), "the incoming domain on hostB", timeout=60, interval=0.2)
        b.kill_libvirtd()
        thread.join(timeout=120)
    finally:
        if not [p for p in b.daemons if p.args[-1] == "libvirtd"]:
            b.start_libvirtd()
    ret = result["ret"]
    assert ret.returncode != 0 and f"migration of VM {NAME} to hostB failed" in str(ret.data), ret
    # The source goes on; libvirtd on hostB, back, has no domain running.
    assert running_on(lab) == ["hostA"]
    type_line(lab.hosts["hostA"], "survived")
    if "could NOT be undone" in str(ret.data):  # the incoming QEMU held hostB's disc open then
        again = salt_cli.run("pairvm.migrate", NAME, "cleanup=True", minion_tgt="hostA")
        assert again.returncode == 0, again
    assert roles(salt_cli) == {"hostA": "Primary", "hostB": "Secondary"}
    assert window_open(lab) == [] and in_sync(salt_cli, NAME)


def test_cleanup_after_the_migration_process_was_killed(vm, salt_cli, salt_run_cli, lab):
    ensure_running_on_home(salt_cli, salt_run_cli, lab)
    # Published without waiting: a killed job never returns, and a CLI waiting for it would
    # wait out its whole timeout.
    started = salt_cli.run("--async", "pairvm.migrate", NAME, "away=True", "bandwidth=1", minion_tgt="hostA")
    jid = re.search(r"\b\d{20}\b", started.stdout).group()
    wait_for(lambda: incoming_on_b(lab), "the incoming domain on hostB", timeout=60, interval=0.2)
    running = salt_cli.run("saltutil.running", minion_tgt="hostA").data
    assert [job["fun"] for job in running if job["jid"] == jid] == ["pairvm.migrate"], running
    assert salt_cli.run("saltutil.kill_job", jid, minion_tgt="hostA").returncode == 0
    wait_for(lambda: not salt_cli.run("saltutil.find_job", jid, minion_tgt="hostA").data,
             "the migration process to be gone", timeout=30, interval=1)
    # A peer-to-peer job is libvirtd's own: it goes on without its client. At 1 MiB/s it
    # would not converge within the 30 ms downtime limit: lift the limit as an operator
    # would (virsh migrate-setspeed), and it lands on hostB. The window the killed process
    # opened stays open and hostA stays Primary (nobody demoted it).
    lab.hosts["hostA"].run(["virsh", "migrate-setspeed", NAME, "8192"])
    wait_for(lambda: running_on(lab) == ["hostB"], f"{NAME} to arrive on hostB", timeout=120)
    assert window_open(lab) == list(HOSTS)
    assert roles(salt_cli) == {"hostA": "Primary", "hostB": "Primary"}
    assert {("EDRBDDUALPRIMARY", "hostA"), ("EDRBDDUALPRIMARY", "hostB")} <= verify_codes(salt_run_cli)
    ret = salt_cli.run("pairvm.migrate", NAME, "cleanup=True", minion_tgt="hostB")  # where it runs now
    assert ret.returncode == 0 and ret.data, ret
    assert ret.data["changes"][0] == f"ssh root@10.77.0.11 drbdadm secondary {NAME}"
    assert ret.data["comment"] == f"VM {NAME} runs on hostB; DRBD is single-primary again"
    assert roles(salt_cli) == {"hostA": "Secondary", "hostB": "Primary"}
    assert window_open(lab) == [] and running_on(lab) == ["hostB"]
    assert verify_codes(salt_run_cli) == {("EVMAWAY", "hostB")}
    type_line(lab.hosts["hostB"], "after-cleanup")
    again = salt_cli.run("pairvm.migrate", NAME, "cleanup=True", minion_tgt="hostA")
    assert again.returncode == 0 and again.data["changes"][0].startswith("drbdadm net-options"), again


def test_cleanup_refuses_when_the_vm_runs_nowhere(vm, salt_cli, lab):
    for host in running_on(lab):
        assert salt_cli.run("pairvm.stop", NAME, minion_tgt=host).returncode == 0
    ret = salt_cli.run("pairvm.migrate", NAME, "cleanup=True", minion_tgt="hostA")
    assert ret.returncode != 0 and "runs on neither hostA nor hostB" in str(ret.data), ret
    assert window_open(lab) == [] and roles(salt_cli) == {"hostA": "Secondary", "hostB": "Secondary"}
