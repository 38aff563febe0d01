"""pairvmlib.progress: the pure meter of long operations and its terminal line."""

from pairvmlib import progress


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
