"""Backups across the pair, to a real sshd, as an operator runs them.

Each lab host runs a real sshd on its own loopback (127.0.0.1:2222) for a
backup user ``pvbackup`` with a key; both serve the same directory, so
either host reaches "the backup host" at the same address.

What the DRBD and LVM shims carry here: the snapshot a backup on the peer
reads is the LVM shim's copy of the block device the DRBD shim maps the
peer's /dev/drbdN to (one block device for both hosts while connected), and
a restore is checked on its home host's backing LV only. That the peer's own
backing LV holds the data is shown on real DRBD 8.4 and LVM by
tests/kernel/test_data_paths.py.
"""

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

import salt.utils.yaml
from tests.integration.test_vm_lifecycle import HOSTS, hv, start_and_wait, wait_for, wait_in_sync
from tests.lab import instance, sshd

# names of this lab instance (tests/lab/instance.py): two labs may run at once
BACKUP_DIR = Path("/var/tmp") / instance.name("pvbackup")
SSHD_DIR = Path("/var/tmp") / instance.name("pvbackup-sshd")
USER = "pvbackup"
PORT = 2222
KEY = "/root/.ssh/pairvm_backup"
KNOWN_HOSTS = "/root/.ssh/pairvm_backup_known_hosts"
PATTERN = Path("/tmp") / instance.name("pvbackup-pattern")
SETTINGS = {"port": PORT, "key": KEY, "known_hosts": KNOWN_HOSTS}


def dest(path):
    return f"{USER}@127.0.0.1:{BACKUP_DIR}/{path}"


@pytest.fixture(scope="module")
def backup_host(lab):
    """sshd on each host's loopback for user pvbackup; the key and known host in /root/.ssh."""
    if subprocess.run(["id", USER], capture_output=True, check=False).returncode:
        subprocess.run(["useradd", "--system", "--home-dir", str(BACKUP_DIR), "--shell", "/bin/sh",
                        "--password", "*", USER],
                       check=True)
    BACKUP_DIR.mkdir(mode=0o755, exist_ok=True)
    subprocess.run(["chown", f"{USER}:", str(BACKUP_DIR)], check=True)
    # sshd reads authorized_keys as the user: not under pytest's 0700 tmp
    conf = sshd.prepare(SSHD_DIR, PORT, (USER,))
    known = sshd.known_hosts(SSHD_DIR, PORT, "127.0.0.1")
    daemons = []
    try:
        for host in lab.hosts.values():
            host.run(["install", "-D", "-m", "0600", str(SSHD_DIR / "client"), KEY])
            host.run(["tee", KNOWN_HOSTS], input=known)
            daemons.append(sshd.start(host, conf, SSHD_DIR / f"sshd-{host.name}.log", "127.0.0.1", PORT))
        yield BACKUP_DIR
    finally:
        sshd.stop(*daemons)
        subprocess.run(["rm", "-rf", str(BACKUP_DIR), str(SSHD_DIR), str(PATTERN)], check=False)
        subprocess.run(["userdel", USER], capture_output=True, check=False)


@pytest.fixture(scope="module")
def backup_pillar(salt_master, salt_cli):
    """pairvm:backup of the test (written into the test pillar file), refreshed on both
    minions; and the host command installed on both (state pairvm.config)."""
    path = Path(salt_master.config["pillar_roots"]["base"][0]) / "test_vms.sls"

    def write(backup):
        path.write_text(salt.utils.yaml.safe_dump({"pairvm": {"backup": backup}} if backup else {}))
        assert salt_cli.run("saltutil.refresh_pillar", "wait=True", minion_tgt="*").returncode == 0

    write(SETTINGS)
    assert salt_cli.run("state.apply", "pairvm.config", minion_tgt="*").returncode == 0
    yield write
    write(None)


def create(lab, salt_run_cli, salt_cli, name, home):
    ret = salt_run_cli.run("pairvm.create", name, home, "128", "64M", "state=stopped",
                           f"hypervisor_options={json.dumps(hv(name))}")
    assert ret.returncode == 0, ret
    wait_in_sync(lab, salt_cli, name)


def minor(host, name):
    return salt.utils.yaml.safe_load(host.run(["cat", f"/machines/{name}"]).stdout)["drbd_minor"]


def home_disc_sha(salt_cli, host, name, size):
    """sha256 of the first ``size`` bytes of the stopped VM's disc as its home ``host`` sees
    it: through /dev/drbdN, promoted for the read (real 8.4 does not open a Secondary)."""
    assert salt_cli.run("drbd.primary", name, minion_tgt=host.name).returncode == 0
    try:
        return host.run(["sh", "-c", f"head -c {size} /dev/drbd{minor(host, name)} | sha256sum"]
                        ).stdout.split()[0]
    finally:
        assert salt_cli.run("drbd.secondary", name, minion_tgt=host.name).returncode == 0


@pytest.fixture(scope="module")
def bvm1(backup_host, backup_pillar, salt_run_cli, salt_cli, lab):
    """A VM homed on hostA whose disc starts with a known pattern (8 MiB, half random)."""
    create(lab, salt_run_cli, salt_cli, "bvm1", "hostA")
    rng = hashlib.sha256(b"pairvm").digest() * 4096  # 128 KiB that repeat
    PATTERN.write_bytes(b"PAIRVM BACKUP PATTERN\n" + os.urandom(4 * 2**20) + rng * 32)
    host = lab.hosts["hostA"]
    assert salt_cli.run("drbd.primary", "bvm1", minion_tgt="hostA").returncode == 0
    host.run(["dd", f"if={PATTERN}", f"of=/dev/drbd{minor(host, 'bvm1')}", "bs=1M", "conv=fsync",
              "status=none"])
    assert salt_cli.run("drbd.secondary", "bvm1", minion_tgt="hostA").returncode == 0
    yield "bvm1"
    salt_run_cli.run("pairvm.destroy", "bvm1", "confirm=True", "force=True")


@pytest.fixture
def running_on_a(bvm1, lab, salt_cli):
    """bvm1 runs on hostA, so that hostB (the peer, holding the replica) backs it up."""
    running = salt_cli.run("pairvm.list", "fields=running", minion_tgt="hostA").data["vms"]
    if not any(row["name"] == "bvm1" and row["running"] for row in running):
        start_and_wait(salt_cli, lab.hosts["hostA"], "bvm1")
    return bvm1


def pattern_sha():
    return hashlib.sha256(PATTERN.read_bytes()).hexdigest()


def snapshots(lab):
    """Backup snapshots left on either host."""
    return [f"{h}:{line.strip()}" for h in HOSTS for line in lab.hosts[h].run(
        ["lvs", "--noheadings", "-o", "lv_name"]).stdout.splitlines() if line.strip().endswith("-backup")]


def files():
    return sorted(str(p.relative_to(BACKUP_DIR)) for p in BACKUP_DIR.rglob("*") if p.is_file())


def host_command(lab, minions, host, *args):
    return lab.hosts[host].run(["pairvm", *args], check=False, timeout=300)


def test_backup_on_the_peer_then_verify_and_restore_into_a_fresh_vm(
        bvm1, lab, salt_cli, salt_run_cli, salt_master, event_listener):
    start_and_wait(salt_cli, lab.hosts["hostA"], "bvm1")
    refused = salt_cli.run("pairvm.backup", "bvm1", dest("bvm1.gz"), minion_tgt="hostA")
    assert refused.returncode != 0 and "it runs on this host" in str(refused.data), refused
    assert files() == []

    started = time.time()
    ret = salt_cli.run("pairvm.backup", "bvm1", dest("_NAME.gz"), "speed=16384", minion_tgt="hostB")
    assert ret.returncode == 0, ret
    assert files() == ["bvm1.gz", "bvm1.gz.sha256"]
    check = subprocess.run(["sha256sum", "-c", "bvm1.gz.sha256"], cwd=BACKUP_DIR, capture_output=True,
                           text=True, check=False)
    assert check.returncode == 0 and check.stdout == "bvm1.gz: OK\n", check
    head = subprocess.run(["sh", "-c", f"pigz -dc {BACKUP_DIR}/bvm1.gz | head -c {PATTERN.stat().st_size}"],
                          capture_output=True, check=True).stdout
    assert hashlib.sha256(head).hexdigest() == pattern_sha()
    assert ret.data["bytes"] > 60 * 2**20
    assert (BACKUP_DIR / "bvm1.gz.sha256").read_text() == f"{ret.data['sha256']}  bvm1.gz\n"
    assert snapshots(lab) == []

    def progress():
        # event.send wraps what it sends in "data"
        events = event_listener.get_events([(salt_master.id, "pairvm/backup/bvm1/progress")],
                                           after_time=started)
        return [e.data["data"] for e in sorted(events, key=lambda e: e.stamp)]

    # The events travel through the master apart from the job's return: wait for the last one.
    wait_for(lambda: any(f["bytes"] == ret.data["bytes"] for f in progress()), "the final progress event",
             timeout=30)
    figures = progress()
    done = [f["bytes"] for f in figures]
    assert len(done) >= 3 and done == sorted(done) and done[-1] == ret.data["bytes"], done
    assert all(f["rate"] > 0 and "eta" in f and f["total"] == ret.data["bytes"] for f in figures)

    verified = salt_cli.run("pairvm.verify_backup", dest("bvm1.gz"), minion_tgt="hostA")
    assert verified.returncode == 0 and verified.data["compression"] == "gzip", verified

    create(lab, salt_run_cli, salt_cli, "bvm2", "hostB")
    try:
        away = salt_cli.run("pairvm.restore", "bvm2", dest("bvm1.gz"), "confirm=True", minion_tgt="hostA")
        assert away.returncode != 0 and "home host hostB" in str(away.data), away
        unconfirmed = salt_cli.run("pairvm.restore", "bvm2", dest("bvm1.gz"), minion_tgt="hostB")
        assert unconfirmed.returncode != 0 and "confirm=True" in str(unconfirmed.data)
        planned = salt_cli.run("pairvm.restore", "bvm2", dest("bvm1.gz"), "test=True", minion_tgt="hostB")
        assert planned.returncode == 0 and [c.split()[0] for c in planned.data["changes"]] == \
            ["ssh", "drbdadm", "ssh", "drbdadm"], planned
        restored = salt_cli.run("pairvm.restore", "bvm2", dest("bvm1.gz"), "confirm=True", minion_tgt="hostB")
        assert restored.returncode == 0, restored
        assert home_disc_sha(salt_cli, lab.hosts["hostB"], "bvm2", PATTERN.stat().st_size) == pattern_sha()
    finally:
        salt_run_cli.run("pairvm.destroy", "bvm2", "confirm=True", "force=True")


def test_zstd_backup_through_the_host_command_shows_progress(running_on_a, lab, minions):
    proc = host_command(lab, minions, "hostB", "backup", "bvm1", dest("z/bvm1.zst"), "32768", "--zstd")
    assert proc.returncode == 0, proc.stderr
    assert "backup bvm1: " in proc.stderr and "MiB/s" in proc.stderr  # progress lines (not a tty)
    assert "sha256" in proc.stdout
    verified = host_command(lab, minions, "hostA", "verify_backup", dest("z/_NAME.zst"), "bvm1")
    assert verified.returncode == 0 and "is intact (zstd" in verified.stdout, verified
    (BACKUP_DIR / "z/bvm1.zst").write_bytes(b"(\xb5/\xfd" + b"garbage" * 100)
    damaged = host_command(lab, minions, "hostA", "verify_backup", dest("z/bvm1.zst"))
    assert damaged.returncode == 1 and "is damaged" in damaged.stderr, damaged


def start_slow_backup(lab, minions, path):
    """The host command backing bvm1 up on hostB at 1 MiB/s, in its own process group."""
    argv = ["pairvm", "backup", "bvm1", dest(path), "1024"]
    proc = subprocess.Popen(lab.hosts["hostB"].argv(argv),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    partial = BACKUP_DIR / f"{path}.partial"
    wait_for(lambda: partial.exists() and partial.stat().st_size > 0, "the transfer to start", timeout=60)
    return proc


def test_killing_the_transfer_leaves_no_file_and_no_snapshot(running_on_a, lab, minions):
    proc = start_slow_backup(lab, minions, "killed.gz")
    lab.hosts["hostB"].run(["pkill", "-KILL", "-f", f"^ssh -T .* -l {USER} "])
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, err)
    assert "ssh (sending to the backup host) was killed by signal 9" in err, err
    assert "killed.gz" not in files() and "killed.gz.partial" not in files()
    assert snapshots(lab) == []


def test_ctrl_c_of_the_host_command_cleans_up(running_on_a, lab, minions):
    proc = start_slow_backup(lab, minions, "interrupted.gz")  # waits for interrupted.gz.partial
    assert "interrupted.gz.partial" in files() and snapshots(lab)
    os.killpg(proc.pid, signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    wait_for(lambda: not snapshots(lab), "the snapshot to be removed", timeout=30)
    assert not [f for f in files() if f.startswith("interrupted.gz")], files()  # nor its .partial


@pytest.mark.parametrize("bad, why", [
    ("-oProxyCommand=touch@x:/tmp/p", "must not start with '-'"),
    (f"{USER}@-oProxyCommand=x:/tmp/p", "the host '-oProxyCommand=x'"),
    (f"{USER}@127.0.0.1:relative/bvm1.gz", "must be absolute"),
    (f"{USER}@127.0.0.1;touch /tmp/x:/tmp/p", "no '-' first, no whitespace or shell characters"),
    (f"{USER} x@127.0.0.1:/tmp/p", "the user"),
    ("127.0.0.1:/tmp/p", "must be user@host:/path"),
])
def test_a_bad_destination_is_refused_before_anything_happens(bvm1, lab, salt_cli, bad, why):
    before = files()
    ret = salt_cli.run("pairvm.backup", "bvm1", f"destination={bad}", minion_tgt="hostB")
    assert ret.returncode != 0 and why in str(ret.data), ret
    assert files() == before and snapshots(lab) == []


def test_all_backs_up_each_vm_and_one_failure_does_not_stop_the_others(
        running_on_a, lab, salt_cli, salt_run_cli):
    create(lab, salt_run_cli, salt_cli, "bvm3", "hostB")
    try:
        (BACKUP_DIR / "all/bvm3.gz.partial").mkdir(parents=True)  # bvm3's upload cannot write
        subprocess.run(["chown", "-R", f"{USER}:", str(BACKUP_DIR / "all")], check=True)
        ret = salt_cli.run("pairvm.backup", "all", dest("all/_NAME.gz"), "speed=0", minion_tgt="hostB")
        assert ret.returncode == 1, ret
        vms = ret.data["vms"]
        assert vms["bvm1"]["result"] is True and vms["bvm3"]["result"] is False
        assert "Is a directory" in vms["bvm3"]["comment"], vms
        assert "all/bvm1.gz" in files() and "all/bvm3.gz" not in files()
        other = salt_cli.run("pairvm.backup", "all", dest("all/_NAME.gz"), minion_tgt="hostA")
        assert {vm: r["result"] for vm, r in other.data["vms"].items()} == {"bvm1": None, "bvm3": None}
        assert snapshots(lab) == []
    finally:
        salt_run_cli.run("pairvm.destroy", "bvm3", "confirm=True", "force=True")


def test_schedule_from_pillar_runs_through_the_minions_scheduler(running_on_a, lab, salt_cli, backup_pillar):
    job = {"vms": ["bvm1"], "destination": dest("sched/_NAME.gz"), "cron": "30 2 * * *", "speed": 0}
    backup_pillar({**SETTINGS, "schedule": {"nightly": job}})
    applied = salt_cli.run("state.apply", "pairvm.host.backup", minion_tgt="hostB")
    assert applied.returncode == 0, applied
    listed = salt_cli.run("schedule.list", "return_yaml=False", minion_tgt="hostB").data
    assert listed["pairvm-backup-nightly"]["function"] == "pairvm.backup"
    assert listed["pairvm-backup-nightly"]["cron"] == "30 2 * * *"
    assert listed["pairvm-backup-nightly"]["kwargs"]["destination"] == dest("sched/_NAME.gz")
    assert salt_cli.run("schedule.run_job", "pairvm-backup-nightly", minion_tgt="hostB").returncode == 0
    wait_for(lambda: "sched/bvm1.gz" in files(), "the scheduled backup", timeout=120)
    backup_pillar(SETTINGS)
    assert salt_cli.run("state.apply", "pairvm.host.backup", minion_tgt="hostB").returncode == 0
    assert "pairvm-backup-nightly" not in (
        salt_cli.run("schedule.list", "return_yaml=False", minion_tgt="hostB").data or {})


def test_test_mode_lists_the_commands_and_changes_nothing(running_on_a, lab, salt_cli):
    before = files()
    ret = salt_cli.run("pairvm.backup", "bvm1", dest("t/_NAME.gz"), "speed=512", "test=True",
                       minion_tgt="hostB")
    assert ret.returncode == 0, ret
    steps = ret.data["changes"]
    assert steps[0] == "lvcreate -s -n bvm1-backup -l 20%ORIGIN there/bvm1"
    assert steps[1].startswith("pv -L 512k /dev/there/bvm1-backup")
    assert f"{BACKUP_DIR}/t/bvm1.gz" in steps[1]
    assert steps[2] == "lvremove -f there/bvm1-backup"
    assert files() == before and snapshots(lab) == []


# --- salt-run pairvm.backup, and refusing an unusable backup host before any snapshot ------------


def seqnos(lab):
    """LVM's metadata sequence number of each VG on each host: every lvcreate/lvremove bumps it."""
    found = {}
    for h in HOSTS:
        for line in lab.hosts[h].run(["vgs", "--noheadings", "-o", "vg_name,vg_seqno"]).stdout.splitlines():
            vg, seqno = line.split()
            found[f"{h}:{vg}"] = int(seqno)
    return found


def ensure_running(salt_cli, lab, name, host):
    rows = salt_cli.run("pairvm.list", minion_tgt=host).data["vms"]
    if not next(r for r in rows if r["name"] == name)["running"]:
        start_and_wait(salt_cli, lab.hosts[host], name)


def test_the_runner_backs_each_vm_up_on_the_host_not_running_it(
        bvm1, lab, salt_cli, salt_run_cli, salt_master, event_listener):
    """bvm1 runs on hostA, bvm4 on hostB: hostB backs bvm1 up, hostA bvm4, at the same time."""
    ensure_running(salt_cli, lab, "bvm1", "hostA")
    create(lab, salt_run_cli, salt_cli, "bvm4", "hostB")
    try:
        start_and_wait(salt_cli, lab.hosts["hostB"], "bvm4")
        before, started = seqnos(lab), time.time()
        ret = salt_run_cli.run("pairvm.backup", "bvm1,bvm4", dest("runner/_NAME.gz"), "16384")
        assert ret.returncode == 0, ret
        assert ret.data["hosts"] == {"hostA": ["bvm4"], "hostB": ["bvm1"]}, ret.data
        assert {vm: (r["host"], r["result"]) for vm, r in ret.data["vms"].items()} == {
            "bvm1": ("hostB", True), "bvm4": ("hostA", True)}
        # Each snapshot was taken where that VM's disc is the replica (VG there), by that host
        # alone: one lvcreate and one lvremove each; the positive control of the refusals below.
        after = seqnos(lab)
        assert {vg: after[vg] - before[vg] for vg in after} == {
            "hostA:here": 0, "hostA:there": 2, "hostB:here": 0, "hostB:there": 2}
        assert [f for f in files() if f.startswith("runner/")] == [
            "runner/bvm1.gz", "runner/bvm1.gz.sha256", "runner/bvm4.gz", "runner/bvm4.gz.sha256"]
        check = subprocess.run(["sha256sum", "-c", "bvm1.gz.sha256", "bvm4.gz.sha256"],
                               cwd=BACKUP_DIR / "runner", capture_output=True, text=True, check=False)
        assert check.returncode == 0, check
        size = PATTERN.stat().st_size
        head = subprocess.run(["sh", "-c", f"pigz -dc {BACKUP_DIR}/runner/bvm1.gz | head -c {size}"],
                              capture_output=True, check=True).stdout
        assert hashlib.sha256(head).hexdigest() == pattern_sha()
        assert snapshots(lab) == []

        def stamps(vm):
            """When the master saw each progress event of ``vm``'s backup (after its last one came)."""
            def events():
                return event_listener.get_events([(salt_master.id, f"pairvm/backup/{vm}/progress")],
                                                 after_time=started)
            wait_for(lambda: any(e.data["data"]["bytes"] == e.data["data"]["total"] for e in events()),
                     f"{vm}'s last progress event", timeout=30)
            return sorted(e.stamp for e in events())

        one, four = stamps("bvm1"), stamps("bvm4")
        assert one[0] < four[-1] and four[0] < one[-1], (one, four)  # the two backups overlapped

        (BACKUP_DIR / "runner/bvm4.gz.partial").mkdir()  # hostA's share cannot write: only bvm4 fails
        failed = salt_run_cli.run("pairvm.backup", "bvm1,bvm4", dest("runner/_NAME.gz"), "speed=0")
        assert failed.returncode == 1, failed
        assert failed.data["vms"]["bvm1"]["result"] is True and failed.data["vms"]["bvm4"]["result"] is False
        assert "FAILED: bvm4 (hostA)" in failed.data["comment"] and "Is a directory" in failed.data["comment"]
        assert snapshots(lab) == []
    finally:
        salt_run_cli.run("pairvm.destroy", "bvm4", "confirm=True", "force=True")


@pytest.fixture
def swapped_key(lab):
    """Put ``kind`` (missing, or a key the backup host does not know) in place of hostB's backup key."""
    host = lab.hosts["hostB"]
    host.run(["mv", KEY, f"{KEY}.kept"])

    def swap(kind):
        if kind == "stranger":
            host.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", KEY])
    try:
        yield swap
    finally:
        host.run(["rm", "-f", KEY, f"{KEY}.pub"])
        host.run(["mv", f"{KEY}.kept", KEY])


@pytest.mark.parametrize("case, why", [
    ("closed port", "Connection refused"),
    ("missing key", f"the backup SSH key {KEY} (pairvm:backup:key) is missing or unreadable"),
    ("key refused", "Permission denied (publickey"),
    ("unwritable directory", "locked/bvm1.gz.partial: Permission denied"),
])
def test_an_unusable_backup_host_is_refused_before_any_snapshot(bvm1, lab, salt_cli, request, case, why):
    ensure_running(salt_cli, lab, "bvm1", "hostA")
    target = dest("locked/bvm1.gz")
    if case == "closed port":  # nothing listens on 127.0.0.2:2222 in the host
        target = f"{USER}@127.0.0.2:{BACKUP_DIR}/x/bvm1.gz"
    elif case in ("missing key", "key refused"):
        request.getfixturevalue("swapped_key")("stranger" if case == "key refused" else None)
    (BACKUP_DIR / "locked").mkdir(exist_ok=True)  # root's, 0755: the backup user cannot write there
    before, listed = seqnos(lab), files()
    ret = salt_cli.run("pairvm.backup", "bvm1", target, minion_tgt="hostB")
    assert ret.returncode != 0 and why in str(ret.data), ret
    assert "nothing was changed" in str(ret.data)
    assert seqnos(lab) == before and files() == listed and snapshots(lab) == []
