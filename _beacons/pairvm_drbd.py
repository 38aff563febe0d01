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

Salt rebuilds its beacons, and their ``__context__``, on every pillar or
module refresh (``salt.minion.Minion.beacons_refresh``, which calls
``close()`` first): the reader ends with ``close()`` and the next run starts
a new one, but what was already reported is kept for the minion process's
life (``drbdevents.TRACKERS``), so a refresh does not report every unhealthy
resource again (the reactor would retry a reconnect each time).

Configuration (minion config or pillar ``beacons``; the formula's
``pairvm.host.watch`` state sets it):

.. code-block:: yaml

    beacons:
      pairvm_drbd:
        - debounce: 2        # seconds a change must hold before it is reported
        - max_delay: 30      # a change still moving is reported after this long

The minion runs its beacons once a second. Leave Salt's own ``interval``
option out: Salt counts it in passes of ``loop_interval`` seconds while the
passes come once a second, so with a ``loop_interval`` below 1 (0.05 in
pytest-salt-factories) ``interval: 1`` means a run every 1/loop_interval
seconds (every 20 s there). The beacon never waits: a run each second costs
one non-blocking read.
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


def _tracker(conf):
    """This beacon's tracker, kept across Salt's rebuilds of the beacons (module docstring)."""
    name = conf.get("_beacon_name", __virtualname__)
    tracker = drbdevents.TRACKERS.get(name)
    if tracker is None:
        tracker = drbdevents.TRACKERS[name] = drbdevents.Tracker(conf["debounce"], conf["max_delay"])
    tracker.debounce, tracker.max_delay = conf["debounce"], conf["max_delay"]
    return tracker


def beacon(config):
    """Read the events2 reader's new lines; return the debounced events that are due."""
    conf = _config(config)
    tracker = _tracker(conf)
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
    """Salt calls this before it rebuilds the beacons (each pillar or module refresh) and when
    the beacon is deleted: end the reader. What was reported is kept (module docstring)."""
    reader = __context__.pop(READER, None)
    if reader is not None:
        reader.stop()
