"""What the ``pairvm_drbd`` beacon makes of ``drbdsetup events2`` (pure: no I/O).

``parse`` reads one events2 line (8.4 and 9 print the same form:
``VERB OBJECT name:RES key:value ...``, verbs ``exists``, ``create``,
``change``, ``destroy``, and ``exists -`` at the end of the initial dump).
``Tracker`` keeps each resource's state from those lines and turns the
changes that matter into events, debounced: a resource's change is reported
once its state has stayed the same for ``debounce`` seconds, or, for a link
that keeps flapping, ``max_delay`` seconds after it first differed from
what was last reported (with the number of changes seen), so a flapping
link gives at most one event per ``max_delay``.

Events (the last part of the beacon's tag ``salt/beacon/<minion>/pairvm_drbd/<res>/<event>``):
``connection_lost``, ``connection_restored``, ``split_brain``,
``disk_not_uptodate``, ``resync_started``, ``resync_finished``,
``role_changed``, ``resource_down``. At the start every resource is
compared with a healthy one (Connected, both discs UpToDate, no resync),
so what is wrong when the beacon starts is reported too.
"""

# Beacon name: its Tracker, for the life of the minion process. Salt reloads the
# beacon module (and empties its __context__) on every pillar or module refresh;
# this module is imported once per process, so what was reported survives that.
TRACKERS = {}

FIELDS = {
    "resource": {"role": "role"},
    "connection": {"connection": "connection", "role": "peer_role"},
    "device": {"disk": "disk"},
    "peer-device": {"replication": "replication", "peer-disk": "peer_disk"},
}
HEALTHY = {"connection": "Connected", "disk": "UpToDate", "peer_disk": "UpToDate", "syncing": False,
           "split_brain": False, "down": False}
DOWN = {"connection": None, "disk": None, "peer_disk": None, "syncing": False, "split_brain": False,
        "down": True}


def parse(line):
    """``(verb, object, resource, {key: value})`` of one events2 line; None for ``exists -``,
    helper calls and anything else that is no object's state."""
    words = line.split()
    if len(words) < 3 or words[0] not in ("exists", "create", "change", "destroy") or words[1] not in FIELDS:
        return None
    fields = dict(word.split(":", 1) for word in words[2:] if ":" in word)
    name = fields.pop("name", None)
    return (words[0], words[1], name, fields) if name else None


def summary(state, split_brain):
    """What the events compare of one resource's raw state."""
    if state is None:
        return dict(DOWN, role=None)
    connection = state.get("connection")
    return {
        "connection": connection,
        "disk": state.get("disk"),
        "peer_disk": state.get("peer_disk"),
        "role": state.get("role"),
        "syncing": (state.get("replication") or "").startswith(("Sync", "PausedSync")),
        "split_brain": connection == "StandAlone" and bool(split_brain),
        "down": False,
    }


def changes(before, after):
    """Event names (in this order) for a resource going from summary ``before`` to ``after``."""
    found = []
    if after["down"]:
        return ["resource_down"] if not before["down"] else []
    if before["connection"] == "Connected" and after["connection"] != "Connected":
        found.append("connection_lost")
    if before["connection"] != "Connected" and after["connection"] == "Connected":
        found.append("connection_restored")
    if after["split_brain"] and not before["split_brain"]:
        found.append("split_brain")
    not_uptodate = {side for side in ("disk", "peer_disk") if after[side] != "UpToDate"}
    was_not = {side for side in ("disk", "peer_disk") if before[side] != "UpToDate"}
    if not_uptodate - was_not:
        found.append("disk_not_uptodate")
    if after["syncing"] and not before["syncing"]:
        found.append("resync_started")
    if before["syncing"] and not after["syncing"]:
        found.append("resync_finished")
    if before.get("role") is not None and after.get("role") != before.get("role"):
        found.append("role_changed")
    return found


class Tracker:
    """Resources' states from events2 lines, and their debounced events."""

    def __init__(self, debounce=2.0, max_delay=30.0):
        self.debounce, self.max_delay = debounce, max_delay
        self.state = {}  # resource: raw state from the lines ({} while only partly known)
        self.reported = {}  # resource: the summary last reported
        self.seen = {}  # resource: [summary now, when it became so, when it first differed, changes]
        self.dump = None  # resources seen in an initial dump under way (a new reader)

    def restart(self):
        """A new ``drbdsetup events2`` reader: its initial dump replaces what is known."""
        self.dump = set()

    def feed(self, line):
        if line.split()[:2] == ["exists", "-"] and self.dump is not None:
            for name in set(self.state) - self.dump:
                del self.state[name]
            self.dump = None
            return
        parsed = parse(line)
        if parsed is None:
            return
        verb, kind, name, fields = parsed
        if verb == "destroy" and kind == "resource":
            self.state.pop(name, None)
            return
        if verb == "exists" and self.dump is not None:
            self.dump.add(name)
        state = self.state.setdefault(name, {})
        for key, field in FIELDS[kind].items():
            if verb == "destroy":
                state.pop(field, None)
            elif key in fields:
                state[field] = fields[key]

    def events(self, now, marked=()):
        """Events of the resources whose change is due now; ``marked``: resources DRBD's
        split-brain handler marked."""
        if self.dump is not None:
            return []  # the initial dump is not complete yet
        due = []
        for name in sorted(set(self.state) | set(self.seen)):
            current = summary(self.state.get(name), name in marked)
            reported = self.reported.get(name)
            if reported is None:
                reported = self.reported[name] = dict(HEALTHY, role=current["role"])
            seen = self.seen.get(name)
            if seen is None or seen[0] != current:
                first = seen[2] if seen and seen[2] is not None else now
                self.seen[name] = seen = [current, now, first, (seen[3] + 1) if seen else 0]
            if current == reported:
                if now - seen[1] >= self.debounce:  # back for good: the flapping is over
                    seen[2], seen[3] = None, 0
                continue
            if seen[2] is None:
                seen[2] = now
            if now - seen[1] < self.debounce and now - seen[2] < self.max_delay:
                continue
            flaps = seen[3]
            for event in changes(reported, current):
                due.append(dict(current, resource=name, event=event, flapping=flaps > 1, changes=flaps))
            self.reported[name] = current
            seen[2], seen[3] = None, 0
            if current["down"]:
                self.seen.pop(name, None)
                self.reported.pop(name, None)
        return due
