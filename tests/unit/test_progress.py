"""Progress of long operations: the pure meter, the module's report, the host command's display."""

import io
import sys
from unittest import mock

from tests.unit.conftest import load, real_utils

progress = load("_utils/pairvm_progress.py", "pairvm_progress_util")
pairvm = load("_modules/pairvm.py", "pairvm_module_progress")
cli = load("salt/pairvm/files/pairvm", "pairvm_cli_progress")


def test_meter_figures_rate_eta_percent():
    meter = progress.Meter(total=100 * 2**20, start=10.0)
    f = meter.figures(25 * 2**20, now=15.0)
    assert f["bytes"] == 25 * 2**20 and f["total"] == 100 * 2**20
    assert f["percent"] == 25.0
    assert f["rate"] == 5 * 2**20
    assert f["eta"] == 15.0 and f["elapsed"] == 5.0


def test_meter_without_total_has_no_eta_or_percent():
    f = progress.Meter(total=None, start=0.0).figures(4096, now=2.0)
    assert f["percent"] is None and f["eta"] is None and f["rate"] == 2048


def test_meter_reports_once_per_interval_and_always_the_final_count():
    meter = progress.Meter(total=10, start=0.0, interval=1.0)
    assert meter.update(1, now=0.1) is not None
    assert meter.update(2, now=0.5) is None
    assert meter.update(3, now=1.2)["bytes"] == 3
    assert meter.update(10, now=1.3, final=True)["bytes"] == 10


def test_line_reads_like_a_progress_bar():
    figures = progress.Meter(total=2**30, start=0.0).figures(2**29, now=50.0)
    assert progress.line("backup", "vm1", figures) == (
        "backup vm1: 512.0 MiB of 1.0 GiB (50.0%), 10.2 MiB/s, ETA 0:00:50"
    )
    assert progress.size(1023) == "1023 B" and progress.size(1536) == "1.5 KiB"


def test_module_sends_an_event_and_a_stderr_line_under_salt_call(loader_mock, monkeypatch):
    send = mock.Mock()
    loader_mock(pairvm, salt={"event.send": send}, utils=real_utils(), opts={"__cli": "salt-call"})
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    figures = progress.Meter(total=1024, start=0.0).figures(512, now=1.0)
    pairvm._progress("backup", "vm1", figures)
    tag, data = send.call_args.args
    assert tag == "pairvm/backup/vm1/progress"
    assert data["bytes"] == 512 and data["name"] == "vm1" and data["operation"] == "backup"
    assert err.getvalue() == "pairvm progress: backup vm1: 512 B of 1.0 KiB (50.0%), 512 B/s, ETA 0:00:01\n"


def test_module_under_a_minion_daemon_writes_no_terminal_line(loader_mock, monkeypatch):
    loader_mock(pairvm, salt={"event.send": mock.Mock()}, utils=real_utils(), opts={"__cli": "salt-minion"})
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    pairvm._progress("backup", "vm1", progress.Meter(total=None, start=0.0).figures(1, now=1.0))
    assert err.getvalue() == ""


def test_a_failing_event_bus_does_not_stop_the_operation(loader_mock):
    loader_mock(pairvm, salt={"event.send": mock.Mock(side_effect=OSError("no bus"))},
                utils=real_utils(), opts={})
    pairvm._progress("backup", "vm1", progress.Meter(total=None, start=0.0).figures(1, now=1.0))


def test_host_command_shows_progress_lines_and_keeps_the_rest():
    out = io.StringIO()
    stream = io.StringIO("pairvm progress: backup vm1: 1 B\nwarning: x\npairvm progress: backup vm1: 2 B\n")
    rest = cli.show_progress(stream, out=out)
    assert out.getvalue() == "backup vm1: 1 B\nbackup vm1: 2 B\n"
    assert rest == "warning: x\n"
