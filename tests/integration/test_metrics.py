"""Metrics and graphite_stats on the lab pair, read by the real consumers.

hostA runs Debian's prometheus-node-exporter (textfile collector only) on
its own loopback and a carbon-cache (graphite-carbon) on its own loopback;
``promtool check metrics`` judges the file. The figures are compared with
``pairvm.list`` of each host. What the DRBD shim carries: the connection,
disc and role states are the shim's answers to the real drbd-utils; its
byte counters are 0 (tests/lab/drbdshim/README.md).
"""

import json
import re
import subprocess
import time

import pytest

from tests.integration.test_vm_lifecycle import hv, start_and_wait, wait_for, wait_in_sync

TEXTFILE_DIR = "/var/lib/pairvm/test-textfile"
TEXTFILE = f"{TEXTFILE_DIR}/pairvm.prom"
EXPORTER_PORT = 9189
CARBON_DIR = "/var/lib/pairvm/test-carbon"
CARBON_PORT = 22103
SAMPLE_RE = re.compile(r'^([a-z_]+)(?:\{(.*)\})? (\S+)$')


def parse(text):
    """{(name, frozenset(labels)): value} of a Prometheus text exposition."""
    found = {}
    for line in text.splitlines():
        match = SAMPLE_RE.match(line)
        if match:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            found[(match.group(1), labels)] = float(match.group(3))
    return found


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


def current(samples, name, key, **labels):
    """The state whose 0/1 series is 1 (None if there is none)."""
    on = [dict(lab)[key] for (n, lab), v in samples.items()
          if n == name and v == 1 and set(labels.items()) <= set(lab)]
    assert len(on) <= 1, (name, labels, on)
    return on[0] if on else None


@pytest.fixture(scope="module")
def mx1(salt_run_cli, salt_cli, lab):
    """A VM homed on hostA, running there, in sync."""
    ret = salt_run_cli.run("pairvm.create", "mx1", "hostA", "128", "64M", "state=stopped",
                           f"hypervisor_options={json.dumps(hv('mx1'))}")
    assert ret.returncode == 0, ret
    wait_in_sync(lab, salt_cli, "mx1")
    start_and_wait(salt_cli, lab.hosts["hostA"], "mx1")
    yield "mx1"
    salt_run_cli.run("pairvm.destroy", "mx1", "confirm=True", "force=True")


@pytest.fixture(scope="module")
def exporter(lab):
    """node_exporter in hostA, serving TEXTFILE_DIR on hostA's loopback."""
    host = lab.hosts["hostA"]
    host.run(["mkdir", "-p", TEXTFILE_DIR])
    proc = subprocess.Popen(host.argv([
        "prometheus-node-exporter", f"--web.listen-address=127.0.0.1:{EXPORTER_PORT}",
        "--collector.disable-defaults", "--collector.textfile",
        f"--collector.textfile.directory={TEXTFILE_DIR}"]),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: scrape(host, check=False), "node_exporter to answer", timeout=30)
        yield host
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        host.run(["rm", "-rf", TEXTFILE_DIR])


def scrape(host, check=True):
    res = host.run(["curl", "-sf", f"http://127.0.0.1:{EXPORTER_PORT}/metrics"], check=check)
    return res.stdout if res.returncode == 0 else None


def listed(salt_cli, host):
    ret = salt_cli.run("pairvm.list", minion_tgt=host)
    assert ret.returncode == 0, ret
    return {row["name"]: row for row in ret.data["vms"]}


def test_scraped_metrics_agree_with_list_and_promtool_accepts_them(mx1, exporter, salt_cli, lab):
    ret = salt_cli.run("pairvm.write_metrics", f"path={TEXTFILE}", minion_tgt="hostA")
    assert ret.returncode == 0, ret
    assert ret.data["changes"] == [f"write {TEXTFILE}"]
    text = exporter.run(["cat", TEXTFILE]).stdout
    checked = exporter.run(["promtool", "check", "metrics"], input=text, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "pairvm_drbd_connection_state" in text
    served = scrape(exporter)
    assert "node_textfile_scrape_error 0" in served
    samples = parse(served)
    rows = listed(salt_cli, "hostA")
    assert set(rows) >= {"mx1"}
    for vm, row in rows.items():
        assert value(samples, "pairvm_vm_running", vm=vm) == float(row["running"]), vm
        assert value(samples, "pairvm_vm_memory_bytes", vm=vm) == row["memory"] * 2**20, vm
        assert value(samples, "pairvm_vm_info", vm=vm, home="hostA" if row["location"] == "home" else "hostB",
                     host="hostA") == 1, vm
        assert current(samples, "pairvm_drbd_connection_state", "state", vm=vm) == row["drbd_connection"], vm
        local_disk = current(samples, "pairvm_drbd_disk_state", "state", vm=vm, side="local")
        assert local_disk == row["drbd_disk"], vm
    assert current(samples, "pairvm_drbd_role", "role", vm="mx1", side="local") == "Primary"
    assert current(samples, "pairvm_drbd_role", "role", vm="mx1", side="peer") == "Secondary"
    assert value(samples, "pairvm_drbd_resync_done_ratio", vm="mx1") == 1
    assert value(samples, "pairvm_drbd_device_size_bytes", vm="mx1") > 60 * 2**20
    assert value(samples, "pairvm_vm_cpu_seconds_total", vm="mx1") > 0
    assert value(samples, "pairvm_vm_disc_size_bytes", vm="mx1") == 64 * 2**20
    assert {v for (n, _), v in samples.items() if n == "pairvm_collector_success"} == {1}


def test_the_peer_reports_the_replica_and_a_cut_link(mx1, salt_cli, lab):
    rows = listed(salt_cli, "hostB")
    ret = salt_cli.run("pairvm.metrics", minion_tgt="hostB")
    assert ret.returncode == 0, ret
    samples = parse(ret.data)
    assert value(samples, "pairvm_vm_running", vm="mx1") == float(rows["mx1"]["running"]) == 0
    assert current(samples, "pairvm_drbd_role", "role", vm="mx1", side="local") == "Secondary"
    flag = lab.hosts["hostA"].dir.parent / "drbd" / "mx1.link-down"
    flag.touch()
    try:
        def cut():
            s = parse(salt_cli.run("pairvm.metrics", minion_tgt="hostB").data)
            return current(s, "pairvm_drbd_connection_state", "state", vm="mx1") == "Connecting" and s
        samples = wait_for(cut, "hostB to see the link cut", timeout=30)
        assert current(samples, "pairvm_drbd_disk_state", "state", vm="mx1", side="peer") == "DUnknown"
        assert listed(salt_cli, "hostB")["mx1"]["drbd_connection"] == "Connecting"
    finally:
        flag.unlink()
    wait_in_sync(lab, salt_cli, "mx1", "mx1 in sync again")


def test_a_bad_textfile_path_is_refused_and_nothing_is_written(salt_cli, lab):
    for bad in ("relative.prom", "/tmp/pairvm.txt", "/var/lib/../../etc/x.prom"):
        ret = salt_cli.run("pairvm.write_metrics", f"path={bad}", minion_tgt="hostA")
        assert ret.returncode != 0 and "invalid metrics textfile" in str(ret.data), ret
    assert lab.hosts["hostA"].run(["ls", "/tmp/pairvm.txt"], check=False).returncode != 0


CARBON_CONF = f"""[cache]
STORAGE_DIR = {CARBON_DIR}/storage/
LOCAL_DATA_DIR = {CARBON_DIR}/storage/whisper/
WHITELISTS_DIR = {CARBON_DIR}/storage/lists/
CONF_DIR = {CARBON_DIR}/
LOG_DIR = {CARBON_DIR}/storage/log/
PID_DIR = {CARBON_DIR}/storage/
USER =
MAX_CACHE_SIZE = inf
MAX_UPDATES_PER_SECOND = inf
MAX_CREATES_PER_MINUTE = inf
LINE_RECEIVER_INTERFACE = 127.0.0.1
LINE_RECEIVER_PORT = {CARBON_PORT}
ENABLE_UDP_LISTENER = False
PICKLE_RECEIVER_INTERFACE = 127.0.0.1
PICKLE_RECEIVER_PORT = {CARBON_PORT + 1}
CACHE_QUERY_INTERFACE = 127.0.0.1
CACHE_QUERY_PORT = {CARBON_PORT + 2}
ENABLE_TAGS = False
ENABLE_LOGROTATION = False
"""


@pytest.fixture
def carbon(lab):
    """A real carbon-cache in hostA, its line receiver on hostA's loopback."""
    host = lab.hosts["hostA"]
    host.run(["mkdir", "-p", CARBON_DIR])
    host.run(["tee", f"{CARBON_DIR}/carbon.conf"], input=CARBON_CONF)
    host.run(["tee", f"{CARBON_DIR}/storage-schemas.conf"], input="[all]\npattern = .*\nretentions = 1s:1h\n")
    proc = subprocess.Popen(host.argv(["carbon-cache", f"--config={CARBON_DIR}/carbon.conf", "--nodaemon",
                                       "start"]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: host.run(["socat", "-u", "/dev/null", f"TCP:127.0.0.1:{CARBON_PORT}"],
                                  check=False).returncode == 0, "carbon-cache to listen", timeout=30)
        yield host
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        host.run(["rm", "-rf", CARBON_DIR])


def whisper_values(host, path):
    res = host.run(["whisper-fetch", f"--from={int(time.time()) - 300}", path], check=False)
    return [float(v) for _, v in (line.split() for line in res.stdout.splitlines()) if v != "None"]


def test_graphite_stats_printed_and_received_by_carbon(mx1, carbon, salt_cli, lab):
    # the host command, as pairvm.config installs it
    assert salt_cli.run("state.apply", "pairvm.config", minion_tgt="hostA").returncode == 0
    printed = carbon.run(["pairvm", "graphite_stats"]).stdout.splitlines()
    running = [line for line in printed if line.startswith("pairvm.mx1.running ")]
    assert len(running) == 1 and running[0].split()[1] == "1", printed
    assert any(line.startswith("pairvm.host.hostA.load1 ") for line in printed), printed
    ret = salt_cli.run("pairvm.graphite_stats", "prefix=lab", f"carbon=127.0.0.1:{CARBON_PORT}",
                       minion_tgt="hostA")
    assert ret.returncode == 0 and ret.data["sent"] >= 10, ret
    whisper = f"{CARBON_DIR}/storage/whisper/lab/pairvm"
    wait_for(lambda: whisper_values(carbon, f"{whisper}/mx1/running.wsp") == [1.0], "carbon to store mx1",
             timeout=30)
    assert whisper_values(carbon, f"{whisper}/mx1/memory_bytes.wsp") == [128.0 * 2**20]
    assert whisper_values(carbon, f"{whisper}/host/hostA/memory_running_bytes.wsp") == [128.0 * 2**20]


def test_graphite_stats_refuses_a_bad_carbon_or_prefix(salt_cli):
    for arg, why in (("carbon=-oProxy:1", "invalid carbon receiver"), ("carbon=host:99999", "invalid carbon"),
                     ("prefix=a..b", "invalid Graphite prefix")):
        ret = salt_cli.run("pairvm.graphite_stats", arg, minion_tgt="hostA")
        assert ret.returncode != 0 and why in str(ret.data), ret


def test_the_metrics_schedule_from_pillar_writes_the_textfile(salt_cli, lab):
    """State pairvm.host.metrics: a scheduler job writes the textfile every interval."""
    host = lab.hosts["hostA"]
    ret = salt_cli.run("state.apply", "pairvm.host.metrics",
                       f'pillar={json.dumps({"pairvm": {"metrics": {"textfile": TEXTFILE, "interval": 2}}})}',
                       minion_tgt="hostA")
    try:
        assert ret.returncode == 0, ret
        jobs = salt_cli.run("schedule.list", "return_yaml=False", minion_tgt="hostA").data
        assert jobs["pairvm-metrics"]["function"] == "pairvm.write_metrics", jobs
        wait_for(lambda: "pairvm_collection_timestamp" in host.run(["cat", TEXTFILE], check=False).stdout,
                 "the scheduler to write the textfile", timeout=30)
    finally:
        salt_cli.run("schedule.delete", "pairvm-metrics", minion_tgt="hostA")
        host.run(["rm", "-rf", TEXTFILE_DIR])
