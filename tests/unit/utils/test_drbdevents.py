"""pairvmlib.drbdevents: events2 lines to debounced events."""

from pairvmlib import drbdevents

DUMP = [
    "exists resource name:vm1 role:Primary suspended:no",
    "exists connection name:vm1 peer-node-id:0 conn-name:peer connection:Connected role:Secondary",
    "exists device name:vm1 volume:0 minor:3 disk:UpToDate",
    "exists peer-device name:vm1 peer-node-id:0 conn-name:peer volume:0 replication:Established"
    " peer-disk:UpToDate resync-suspended:no",
    "exists -",
]


def tracker(debounce=2, max_delay=30):
    t = drbdevents.Tracker(debounce, max_delay)
    t.restart()
    for line in DUMP:
        t.feed(line)
    return t


def names(events):
    return [e["event"] for e in events]


def test_a_healthy_start_says_nothing():
    t = tracker()
    assert t.events(0) == [] and t.events(100) == []


def test_connection_lost_after_debounce_then_restored():
    t = tracker()
    t.events(0)
    t.feed("change connection name:vm1 peer-node-id:0 conn-name:peer connection:Connecting role:Unknown")
    t.feed("change peer-device name:vm1 peer-node-id:0 conn-name:peer volume:0 replication:Off"
           " peer-disk:DUnknown")
    assert t.events(1) == [] and t.events(2.5) == []  # changed at 1: due at 3
    lost = t.events(3)
    assert names(lost) == ["connection_lost", "disk_not_uptodate"]
    assert lost[0]["resource"] == "vm1" and lost[0]["connection"] == "Connecting"
    assert lost[0]["split_brain"] is False and lost[0]["flapping"] is False
    assert t.events(10) == []
    t.feed("change connection name:vm1 peer-node-id:0 conn-name:peer connection:Connected role:Secondary")
    t.feed("change peer-device name:vm1 peer-node-id:0 conn-name:peer volume:0 replication:SyncSource")
    t.events(11)
    assert names(t.events(13)) == ["connection_restored", "resync_started"]
    t.feed("change peer-device name:vm1 peer-node-id:0 conn-name:peer volume:0 replication:Established"
           " peer-disk:UpToDate")
    t.events(14)
    assert names(t.events(16)) == ["resync_finished"]


def test_a_flapping_link_gives_one_event_per_max_delay():
    t = tracker(debounce=2, max_delay=10)
    t.events(0)
    sent = []
    for step in range(60):  # flips every 0.5 s for 30 s
        state = "Connecting" if step % 2 == 0 else "Connected"
        t.feed(f"change connection name:vm1 peer-node-id:0 conn-name:peer connection:{state}")
        sent += t.events(step * 0.5)
    assert 1 <= len(sent) <= 3, sent
    assert all(e["flapping"] for e in sent)


def test_a_short_blip_is_not_reported():
    t = tracker()
    t.events(0)
    t.feed("change connection name:vm1 peer-node-id:0 conn-name:peer connection:Connecting")
    t.events(1)
    t.feed("change connection name:vm1 peer-node-id:0 conn-name:peer connection:Connected")
    assert t.events(1.5) == [] and t.events(10) == []


def test_split_brain_needs_the_handlers_mark():
    t = tracker()
    t.events(0)
    t.feed("change connection name:vm1 peer-node-id:0 conn-name:peer connection:StandAlone role:Unknown")
    t.events(1)
    plain = t.events(3)
    assert names(plain) == ["connection_lost"] and plain[0]["connection"] == "StandAlone"
    assert plain[0]["split_brain"] is False
    t.events(4, marked={"vm1"})
    assert names(t.events(6, marked={"vm1"})) == ["split_brain"]


def test_role_change_and_resource_down():
    t = tracker()
    t.events(0)
    t.feed("change resource name:vm1 role:Secondary")
    t.events(1)
    assert names(t.events(3)) == ["role_changed"]
    for kind in ("peer-device", "device", "connection", "resource"):
        t.feed(f"destroy {kind} name:vm1")
    t.events(4)
    assert names(t.events(6)) == ["resource_down"]
    assert t.events(20) == []


def test_what_is_wrong_at_the_start_is_reported():
    t = drbdevents.Tracker(2, 30)
    t.restart()
    for line in DUMP[:1] + ["exists connection name:vm1 peer-node-id:0 connection:StandAlone role:Unknown",
                            "exists device name:vm1 volume:0 minor:3 disk:UpToDate",
                            "exists peer-device name:vm1 peer-node-id:0 volume:0 replication:Off"
                            " peer-disk:DUnknown", "exists -"]:
        t.feed(line)
    t.events(0)
    assert names(t.events(2)) == ["connection_lost", "disk_not_uptodate"]


def test_a_new_reader_drops_what_its_dump_does_not_have():
    t = tracker()
    t.events(0)
    t.restart()
    assert t.events(1) == []  # dump not finished
    t.feed("exists -")
    t.events(2)
    assert names(t.events(4)) == ["resource_down"]


def test_lines_that_are_no_state_are_ignored():
    assert drbdevents.parse("call helper name:vm1 volume:0 helper:split-brain") is None
    assert drbdevents.parse("exists -") is None
    assert drbdevents.parse("change device minor:3 disk:UpToDate") is None
    assert drbdevents.parse("change device name:vm1 minor:3 disk:Failed") == (
        "change", "device", "vm1", {"minor": "3", "disk": "Failed"})
