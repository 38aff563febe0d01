"""pairvmlib.metrics: samples, Prometheus text (judged by the real promtool), Graphite lines, settings."""

import subprocess

import pytest

from pairvmlib import metrics
from pairvmlib.errors import Invalid

MIB = 2**20


def record(home, memory=256, vcpus=1, state="running", suppress=False):
    return {"home": home, "peer": "hostB" if home == "hostA" else "hostA", "memory": memory, "vcpus": vcpus,
            "state": state, "suppress": suppress,
            "hosts": {"hostA": {"vg": "here" if home == "hostA" else "there"},
                      "hostB": {"vg": "here" if home == "hostB" else "there"}}}


RECORDS = {"vm1": record("hostA", vcpus=2), "vm2": record("hostB", memory=512),
           "vm3": record("hostA", memory=128, state="stopped")}
DRBD = {
    "vm1": {"connection": "Connected", "replication": "SyncSource", "disk": "UpToDate",
            "peer_disk": "Inconsistent", "role": "Primary", "peer_role": "Secondary", "split_brain": False,
            "statistics": {"size": 1000, "out_of_sync": 250, "sent": 10, "received": 0, "read": 3,
                           "written": 4}},
    "vm2": {"connection": "StandAlone", "replication": "Off", "disk": "UpToDate", "peer_disk": "DUnknown",
            "role": "Primary", "peer_role": "Unknown", "split_brain": True},
}
DOMAINS = {
    "vm1": metrics.domain_figures({"state.state": 1, "cpu.time": 2_500_000_000, "block.count": 2,
                                   "block.0.rd.bytes": 100, "block.0.wr.bytes": 5,
                                   "block.1.rd.bytes": 20, "block.1.wr.bytes": 1}),
    "vm2": metrics.domain_figures({"state.state": 1, "cpu.time": 1_000_000_000}),
    "vm3": metrics.domain_figures({"state.state": 5}),
}
LVS = {"here/vm1": 1024, "there/vm2": 2048}
BACKUPS = {"vm2": {"result": False, "duration": 12.5, "size": 4096, "last_success": 1700000000.0},
           "gone": {"result": True}}
VIEW = {"me": "hostA", "memory_cap": 2048}


def samples(**changes):
    args = {"me": "hostA", "view": VIEW, "records": RECORDS, "drbd": DRBD, "domains": DOMAINS, "lvs": LVS,
            "backups": BACKUPS, "suppressed": (), "failed": (), "now": 1700000100.5, **changes}
    return {(name, tuple(sorted(labels.items()))): value for name, labels, value in metrics.collect(**args)}


def get(found, name, **labels):
    return found[(name, tuple(sorted(labels.items())))]


def test_vm_figures():
    found = samples()
    assert get(found, "pairvm_vm_info", vm="vm2", home="hostB", host="hostA") == 1
    assert get(found, "pairvm_vm_running", vm="vm1") == 1 and get(found, "pairvm_vm_running", vm="vm3") == 0
    assert get(found, "pairvm_vm_away", vm="vm2") == 1 and get(found, "pairvm_vm_away", vm="vm1") == 0
    assert get(found, "pairvm_vm_should_run", vm="vm3") == 0
    assert get(found, "pairvm_vm_should_run", vm="vm1") == 1
    assert get(found, "pairvm_vm_memory_bytes", vm="vm2") == 512 * MIB
    assert get(found, "pairvm_vm_vcpus", vm="vm1") == 2
    assert get(found, "pairvm_vm_cpu_seconds_total", vm="vm1") == 2.5
    assert get(found, "pairvm_vm_disc_read_bytes_total", vm="vm1") == 120
    assert get(found, "pairvm_vm_disc_written_bytes_total", vm="vm1") == 6
    assert get(found, "pairvm_vm_disc_size_bytes", vm="vm2") == 2048 * MIB
    assert ("pairvm_vm_cpu_seconds_total", (("vm", "vm3"),)) not in found  # not running here
    assert get(found, "pairvm_pair_memory_defined_bytes") == 896 * MIB
    assert get(found, "pairvm_host_memory_running_bytes") == 768 * MIB
    assert get(found, "pairvm_pair_memory_cap_bytes") == 2048 * MIB


def test_suppressed_here_is_not_expected_to_run():
    assert get(samples(suppressed=["vm1"]), "pairvm_vm_should_run", vm="vm1") == 0


def test_drbd_states_one_series_each_with_the_current_one_at_1():
    found = samples()
    conn = {dict(lab)["state"]: v for (n, lab), v in found.items()
            if n == "pairvm_drbd_connection_state" and dict(lab)["vm"] == "vm1"}
    assert conn == {"StandAlone": 0, "Connecting": 0, "Connected": 1}
    assert get(found, "pairvm_drbd_disk_state", vm="vm1", side="peer", state="Inconsistent") == 1
    assert get(found, "pairvm_drbd_disk_state", vm="vm1", side="peer", state="UpToDate") == 0
    assert get(found, "pairvm_drbd_role", vm="vm2", side="peer", role="Unknown") == 1
    assert get(found, "pairvm_drbd_split_brain", vm="vm2") == 1
    assert get(found, "pairvm_drbd_split_brain", vm="vm1") == 0
    assert get(found, "pairvm_drbd_out_of_sync_bytes", vm="vm1") == 250 * 1024
    assert get(found, "pairvm_drbd_resync_done_ratio", vm="vm1") == 0.75
    assert get(found, "pairvm_drbd_network_sent_bytes_total", vm="vm1") == 10240
    assert get(found, "pairvm_drbd_disk_written_bytes_total", vm="vm1") == 4096
    # a state pairvm does not list still shows as the current one
    odd = samples(drbd={"vm1": dict(DRBD["vm1"], connection="NetworkFailure")})
    assert get(odd, "pairvm_drbd_connection_state", vm="vm1", state="NetworkFailure") == 1
    assert not any(n.startswith("pairvm_drbd") and dict(lab).get("vm") == "vm3" for n, lab in found)


def test_backup_figures_only_for_vms_defined_here():
    found = samples()
    assert get(found, "pairvm_backup_last_success_timestamp_seconds", vm="vm2") == 1700000000.0
    assert get(found, "pairvm_backup_last_duration_seconds", vm="vm2") == 12.5
    assert get(found, "pairvm_backup_last_result", vm="vm2", result="failure") == 1
    assert get(found, "pairvm_backup_last_result", vm="vm2", result="success") == 0
    assert not any(dict(lab).get("vm") == "gone" for _, lab in found)


def test_a_failed_source_is_named_and_its_figures_are_absent():
    found = samples(drbd={}, failed=["drbd"])
    assert get(found, "pairvm_collector_success", source="drbd") == 0
    assert get(found, "pairvm_collector_success", source="libvirt") == 1
    assert not any(n.startswith("pairvm_drbd") for n, _ in found)


def exposition():
    return metrics.exposition(metrics.collect("hostA", VIEW, RECORDS, DRBD, DOMAINS, LVS, BACKUPS,
                                              now=1700000100.5))


def promtool(text):
    return subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True,
                          check=False)


def test_promtool_accepts_the_exposition():
    text = exposition()
    res = promtool(text)
    assert res.returncode == 0, res.stdout + res.stderr
    assert text.count("# TYPE pairvm_drbd_connection_state gauge") == 1
    assert 'pairvm_vm_info{home="hostB",host="hostA",vm="vm2"} 1\n' in text
    assert "pairvm_vm_cpu_seconds_total{vm=\"vm1\"} 2.5\n" in text


def test_promtool_catches_a_broken_name():
    """Positive control of the check above: promtool does judge pairvm's names."""
    text = exposition().replace("pairvm_vm_cpu_seconds_total", "pairvm_vm_cpu_milliseconds")
    res = promtool(text)
    assert res.returncode != 0 and "pairvm_vm_cpu_milliseconds" in res.stdout + res.stderr


def test_label_values_are_escaped():
    text = metrics.exposition([("pairvm_vm_info", {"vm": 'a"b\\c\nd', "home": "x", "host": "y"}, 1)])
    assert 'vm="a\\"b\\\\c\\nd"' in text


def test_graphite_lines():
    lines = metrics.graphite(metrics.collect("host.a", VIEW, RECORDS, DRBD, DOMAINS, LVS, {}, now=5.0),
                             "servers.x", "host.a", 1700000000.9, load=(0.5, 1.0, 1.5))
    assert "servers.x.pairvm.vm1.running 1 1700000000" in lines
    assert "servers.x.pairvm.vm1.drbd.sent_bytes 10240 1700000000" in lines
    assert "servers.x.pairvm.vm1.drbd.resync_done_ratio 0.75 1700000000" in lines
    assert "servers.x.pairvm.host.host_a.load5 1 1700000000" in lines
    assert "servers.x.pairvm.host.host_a.memory_running_bytes 805306368 1700000000" in lines
    assert all(len(line.split()) == 3 for line in lines)
    assert metrics.graphite([], "", "h", 1, None) == []


@pytest.mark.parametrize("bad", ["a..b", ".a", "a b", "a;b", "a/b"])
def test_bad_prefix(bad):
    with pytest.raises(Invalid, match="Graphite prefix"):
        metrics.check_prefix(bad)


@pytest.mark.parametrize(("given", "expected"), [
    ("graphite.example.net", ("graphite.example.net", 2003)), ("10.0.0.1:2103", ("10.0.0.1", 2103)),
    ("[::1]:2003", ("::1", 2003)), ("::1", ("::1", 2003)),
])
def test_carbon(given, expected):
    assert metrics.check_carbon(given) == expected


@pytest.mark.parametrize("bad", ["-oProxyCommand=x", "host:0", "host:65536", "host:x", "a b:1", "", "h;rm:1"])
def test_bad_carbon(bad):
    with pytest.raises(Invalid, match="carbon receiver"):
        metrics.check_carbon(bad)


def test_settings_defaults_and_checks():
    assert metrics.settings(None) == {
        "textfile": "/var/lib/prometheus/node-exporter/pairvm.prom", "interval": 60,
        "graphite": {"carbon": None, "prefix": "", "interval": 60}}
    got = metrics.settings({"interval": 0, "graphite": {"carbon": "g:2004", "prefix": "a.b"}})
    assert got["interval"] == 0 and got["graphite"] == {"carbon": "g:2004", "prefix": "a.b", "interval": 60}
    for bad, why in (({"textfile": "/x/pairvm.txt"}, "textfile"), ({"interval": "60"}, "interval"),
                     ({"graphite": {"interval": 0}}, "graphite:interval"), ({"colour": 1}, "unknown key"),
                     ({"graphite": {"carbon": "-x"}}, "carbon")):
        with pytest.raises(Invalid, match=why):
            metrics.settings(bad)
