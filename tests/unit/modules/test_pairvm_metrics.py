"""_modules/pairvm_metrics.py: one query per source, the textfile written atomically, bad input refused."""

import copy
import os
from unittest import mock

import libvirt
import pytest

from pairvmlib import layout
from salt.exceptions import CommandExecutionError
from tests.unit.fakehost import MODULES, drbd_state

pairvm = MODULES["pairvm_metrics"]


@pytest.fixture
def watched(host, monkeypatch, tmp_path):
    """hostA with drbd.status taking statistics and libvirt answering getAllDomainStats."""
    monkeypatch.setattr(layout, "STATE_DIR", str(tmp_path / "state"))
    status = mock.Mock(side_effect=lambda name=None, statistics=False: copy.deepcopy(host.drbd))
    host.salt["drbd.status"] = status

    def all_stats(flags, _flags2=0):
        host.log.append(("libvirt.getAllDomainStats", (flags,), {}))
        return [(dom, {"state.state": 1 if dom.isActive() else 5, "cpu.time": 3 * 10**9})
                for dom in host.domains.values()]

    host.conn.getAllDomainStats = all_stats
    return host


def queries(host):
    return {name: len(host.calls(name)) for name in ("lvm.lvdisplay", "libvirt.getAllDomainStats")}


def define(host, count):
    for i in range(count):
        name = f"m{i}"
        host.define(name, home="hostA", memory=64, disc="32M")
        host.install(name, drbd=drbd_state(role="Primary"), domain="running" if i % 2 == 0 else "stopped")


@pytest.mark.parametrize("count", [1, 12])
def test_one_query_of_each_source_however_many_vms(watched, count):
    define(watched, count)
    text = pairvm.metrics()
    assert queries(watched) == {"lvm.lvdisplay": 1, "libvirt.getAllDomainStats": 1}
    assert watched.salt["drbd.status"].call_args_list == [mock.call(statistics=True)]
    assert text.count("pairvm_vm_info{") == count
    assert 'pairvm_vm_running{vm="m0"} 1' in text and 'pairvm_vm_cpu_seconds_total{vm="m0"} 3' in text
    if count > 1:
        assert 'pairvm_vm_running{vm="m1"} 0' in text and 'pairvm_vm_cpu_seconds_total{vm="m1"}' not in text
    flags = watched.calls("libvirt.getAllDomainStats")[0][0][0]
    assert flags == libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL | \
        libvirt.VIR_DOMAIN_STATS_BLOCK


def test_no_vm_asks_no_runtime(watched):
    text = pairvm.metrics()
    assert queries(watched) == {"lvm.lvdisplay": 0, "libvirt.getAllDomainStats": 0}
    assert "pairvm_pair_memory_cap_bytes 4294967296" in text


def test_a_failing_source_is_reported_and_the_rest_still_comes(watched):
    define(watched, 1)
    watched.salt["drbd.status"].side_effect = CommandExecutionError("drbdsetup failed")
    text = pairvm.metrics()
    assert 'pairvm_collector_success{source="drbd"} 0' in text
    assert 'pairvm_collector_success{source="libvirt"} 1' in text and "pairvm_drbd_" not in text
    assert 'pairvm_vm_running{vm="m0"} 1' in text


def test_write_metrics_renames_a_complete_file(watched, tmp_path):
    define(watched, 1)
    target = tmp_path / "textfile" / "pairvm.prom"
    dry = pairvm.write_metrics(path=str(target), test=True)
    assert dry["changes"] == [f"write {target}"] and not target.parent.exists()
    renamed = []
    real_rename = os.rename
    with mock.patch("os.rename", side_effect=lambda a, b: (renamed.append((a, b)), real_rename(a, b))):
        done = pairvm.write_metrics(path=str(target))
    assert done["changes"] == [f"write {target}"] and done["path"] == str(target)
    assert renamed == [(f"{target}.pairvm-tmp", str(target))]
    assert 'pairvm_vm_info{home="hostA",host="hostA",vm="m0"} 1' in target.read_text()
    assert sorted(p.name for p in target.parent.iterdir()) == ["pairvm.prom"]


@pytest.mark.parametrize("bad", ["relative.prom", "/tmp/x.txt", "/a/../etc/x.prom", "/a/x.prom\n"])
def test_a_bad_path_is_refused_and_nothing_is_written(watched, bad):
    before = watched.snapshot()
    with pytest.raises(CommandExecutionError, match="invalid metrics textfile"):
        pairvm.write_metrics(path=bad)
    assert watched.snapshot() == before and queries(watched)["lvm.lvdisplay"] == 0


def test_the_textfile_defaults_to_pillar(watched, tmp_path):
    target = tmp_path / "p" / "pairvm.prom"
    watched.pillar["pairvm"]["metrics"] = {"textfile": str(target)}
    assert pairvm.write_metrics()["path"] == str(target) and target.exists()
    watched.pillar["pairvm"]["metrics"] = {"textfile": "nope"}
    with pytest.raises(CommandExecutionError, match="textfile"):
        pairvm.write_metrics()


def test_graphite_stats_prints_and_sends(watched):
    define(watched, 1)
    lines = pairvm.graphite_stats(prefix="srv").splitlines()
    assert any(line.startswith("srv.pairvm.m0.running 1 ") for line in lines)
    sent = []

    class Conn:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def sendall(self, data):
            sent.append(data)

    with mock.patch.object(pairvm.socket, "create_connection", return_value=Conn()) as connect:
        res = pairvm.graphite_stats(carbon="127.0.0.1:2103")
    assert connect.call_args.args[0] == ("127.0.0.1", 2103)
    assert res == {"sent": len(lines), "carbon": "127.0.0.1:2103"}
    assert sent[0].decode().startswith("pairvm.") and sent[0].endswith(b"\n")


def test_graphite_stats_refuses_bad_input_before_collecting(watched):
    for kwargs, why in (({"carbon": "-oProxyCommand=x"}, "carbon receiver"), ({"prefix": "a..b"}, "prefix")):
        with pytest.raises(CommandExecutionError, match=why):
            pairvm.graphite_stats(**kwargs)
    assert queries(watched)["lvm.lvdisplay"] == 0


def test_an_unreachable_carbon_is_a_clear_error(watched):
    refused = ConnectionRefusedError(111, "refused")
    with mock.patch.object(pairvm.socket, "create_connection", side_effect=refused):
        with pytest.raises(CommandExecutionError, match="cannot send to carbon at 127.0.0.1:9"):
            pairvm.graphite_stats(carbon="127.0.0.1:9")
