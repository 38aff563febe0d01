"""pairvmlib.host: what the execution modules share on a host (progress reports here;
the rest is exercised through the modules, tests/unit/modules)."""

import io
import sys
from unittest import mock

from pairvmlib import progress
from pairvmlib.host import Host


def test_module_sends_an_event_and_a_stderr_line_under_salt_call(monkeypatch):
    send = mock.Mock()
    host = Host({"event.send": send}, {"__cli": "salt-call"}, {}, {"id": "hostA"})
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    figures = progress.Meter(total=1024, start=0.0).figures(512, now=1.0)
    host.progress("backup", "vm1", figures)
    tag, data = send.call_args.args
    assert tag == "pairvm/backup/vm1/progress"
    assert data["bytes"] == 512 and data["name"] == "vm1" and data["operation"] == "backup"
    assert err.getvalue() == "pairvm progress: backup vm1: 512 B of 1.0 KiB (50.0%), 512 B/s, ETA 0:00:01\n"


def test_module_under_a_minion_daemon_writes_no_terminal_line(monkeypatch):
    host = Host({"event.send": mock.Mock()}, {"__cli": "salt-minion"}, {}, {"id": "hostA"})
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    host.progress("backup", "vm1", progress.Meter(total=None, start=0.0).figures(1, now=1.0))
    assert err.getvalue() == ""


def test_a_failing_event_bus_does_not_stop_the_operation():
    host = Host({"event.send": mock.Mock(side_effect=OSError("no bus"))}, {}, {}, {"id": "hostA"})
    host.progress("backup", "vm1", progress.Meter(total=None, start=0.0).figures(1, now=1.0))
