"""Beacon ``pairvm_drbd``: DRBD changes that matter, from one long-lived ``drbdsetup events2``.

One ``drbdsetup events2 all`` process per minion follows every resource (no
poll per VM); each run of the beacon reads what it printed since, without
waiting. What matters (``pairvmlib.drbdevents``: connection lost or
restored, split brain, a disc not UpToDate, resync started or finished,
role changed, resource down) goes to the master's bus as
``salt/beacon/<minion>/pairvm_drbd/<resource>/<event>`` with the
resource's state, debounced: a change is reported once it has held for
``debounce`` seconds, a flapping link at most once per ``max_delay``
seconds. If the reader ends it is started again at the next run; its
initial dump then catches up. A split brain is what DRBD's split-brain
handler marked (see the ``drbd`` module).

Configuration (minion config or pillar ``beacons``; the formula's
``pairvm.host.watch`` state sets it):

.. code-block:: yaml

    beacons:
      pairvm_drbd:
        - interval: 1        # seconds between two runs (Salt's own option)
        - debounce: 2        # seconds a change must hold before it is reported
        - max_delay: 30      # a change still moving is reported after this long
"""

import logging
import os
import subprocess
import sys
import time

import salt.utils.path

# Salt's beacons loader, unlike the execution modules' one, does not put the
# synced _utils directory on sys.path: it is the sibling of this file's
# directory (<extension_modules>/beacons/ and <extension_modules>/utils/).
UTILS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "utils")
if os.path.isdir(os.path.join(UTILS_DIR, "pairvmlib")) and UTILS_DIR not in sys.path:
    sys.path.append(UTILS_DIR)

from pairvmlib import drbdevents, layout  # noqa: E402 - after the path above

__virtualname__ = "pairvm_drbd"
log = logging.getLogger(__name__)
READER = "pairvm_drbd.reader"
TRACKER = "pairvm_drbd.tracker"
DEFAULTS = {"debounce": 2.0, "max_delay": 30.0}
READ_LIMIT = 1 << 20  # bytes read per run at most (a burst is read on at the next run)


def __virtual__():
    if salt.utils.path.which("drbdsetup"):
        return __virtualname__
    return (False, "pairvm_drbd: drbdsetup not found; install drbd-utils")


def _config(config):
    merged = dict(DEFAULTS)
    for item in config if isinstance(config, list) else [config]:
        if isinstance(item, dict):
            merged.update(item)
    return merged


def validate(config):
    """The beacon's options: ``debounce`` and ``max_delay``, seconds from 0 to 3600."""
    if not isinstance(config, list | dict):
        return False, "pairvm_drbd: the configuration must be a list of options"
    merged = _config(config)
    for key in DEFAULTS:
        value = merged[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 3600:
            return False, f"pairvm_drbd: {key} must be a number of seconds from 0 to 3600, got {value!r}"
    return True, "valid beacon configuration"


class Reader:
    """One ``drbdsetup events2 all`` process and the part of a line it has not ended yet."""

    def __init__(self):
        self.proc = subprocess.Popen(["drbdsetup", "events2", "all"], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.partial = b""

    def alive(self):
        return self.proc.poll() is None

    def lines(self):
        """The whole lines printed since the last call (never waits)."""
        try:
            data = self.proc.stdout.read(READ_LIMIT) or b""
        except BlockingIOError:
            data = b""
        text = self.partial + data
        *complete, self.partial = text.split(b"\n")
        return [line.decode("utf-8", "replace") for line in complete]

    def stop(self):
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


def _marks():
    """The resources DRBD's split-brain handler marked (``layout.SPLIT_BRAIN_DIR``)."""
    directory = layout.SPLIT_BRAIN_DIR
    return set(os.listdir(directory)) if os.path.isdir(directory) else set()


def beacon(config):
    """Read the events2 reader's new lines; return the debounced events that are due."""
    conf = _config(config)
    tracker = __context__.get(TRACKER)
    if tracker is None:
        tracker = __context__[TRACKER] = drbdevents.Tracker(conf["debounce"], conf["max_delay"])
    reader = __context__.get(READER)
    if reader is None or not reader.alive():
        if reader is not None:
            for line in reader.lines():  # what it printed before it ended
                tracker.feed(line)
            log.warning("pairvm_drbd: drbdsetup events2 ended (rc %s); starting it again",
                        reader.proc.returncode)
            reader.stop()
        try:
            reader = __context__[READER] = Reader()
            log.info("pairvm_drbd: following drbdsetup events2 (pid %s)", reader.proc.pid)
        except OSError as exc:
            log.error("pairvm_drbd: cannot start drbdsetup events2: %s", exc)
            __context__.pop(READER, None)
            return []
        tracker.restart()
    for line in reader.lines():
        tracker.feed(line)
    found = tracker.events(time.time(), _marks())
    for event in found:
        event["tag"] = f"{event['resource']}/{event['event']}"
        log.info("pairvm_drbd: %s %s (%s)", event["resource"], event["event"], event["connection"])
    return found


def close(config):
    """Salt calls this when the beacon is removed or the minion stops: end the reader."""
    reader = __context__.pop(READER, None)
    if reader is not None:
        reader.stop()
    __context__.pop(TRACKER, None)
