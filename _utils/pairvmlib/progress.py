"""Progress of a long copy (backup, restore, image): bytes, rate, ETA.

Pure: the caller reads its own clock and byte counter and hands both in;
``Meter.update`` says when a report is due and returns its figures, and
``line`` turns figures into the text shown on a terminal. Standard library
only: the host command imports it too.
"""

# Under salt-call, a long function writes ``PREFIX + line(...)`` on stderr;
# the host command shows such lines as progress.
PREFIX = "pairvm progress: "

UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


class Meter:
    """Figures of a copy of ``total`` bytes (None when unknown) that began at ``start``.

    ``update(done, now)`` returns the figures at most once per ``interval``
    seconds (and always for the final count), else None.
    """

    def __init__(self, total, start, interval=1.0):
        self.total = total
        self.start = start
        self.interval = interval
        self._last = None

    def figures(self, done, now):
        elapsed = max(now - self.start, 1e-9)
        rate = done / elapsed
        remaining = None if self.total is None else max(self.total - done, 0)
        return {
            "bytes": done,
            "total": self.total,
            "percent": None if not self.total else round(100.0 * min(done, self.total) / self.total, 1),
            "rate": round(rate),
            "elapsed": round(elapsed, 1),
            "eta": None if remaining is None or rate <= 0 else round(remaining / rate, 1),
        }

    def update(self, done, now, final=False):
        if not final and self._last is not None and now - self._last < self.interval:
            return None
        self._last = now
        return self.figures(done, now)


def size(count):
    """1536 -> '1.5 KiB'."""
    value = float(count)
    for unit in UNITS:
        if value < 1024 or unit == UNITS[-1]:
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


def duration(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def line(operation, name, figures):
    """'backup vm1: 512.0 MiB of 1.0 GiB (50.0%), 10.2 MiB/s, ETA 0:00:50'."""
    done = size(figures["bytes"])
    if figures.get("total"):
        done += f" of {size(figures['total'])} ({figures['percent']}%)"
    text = f"{operation} {name}: {done}, {size(figures['rate'])}/s"
    if figures.get("eta") is not None:
        text += f", ETA {duration(figures['eta'])}"
    return text
