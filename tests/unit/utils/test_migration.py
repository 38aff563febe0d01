"""pairvmlib.migration: the decisions of a live migration, without I/O."""

import pytest

from pairvmlib import migration
from pairvmlib.errors import Invalid

RECORD = {"name": "vm1", "home": "hostA", "peer": "hostB", "memory": 512, "bridge": "br0"}
GOOD = {
    "running": True,
    "drbd": {"connection": "Connected", "disk": "UpToDate", "peer_disk": "UpToDate"},
    "cache": "none", "peer_libvirt": None, "peer_record_same": True, "peer_bridge": True,
    "peer_free_mib": 4096, "peer_running": False,
}


def test_ssh_argv_reaches_root_on_the_peer_without_a_shell_string():
    argv = migration.ssh_argv("10.77.0.12", ["drbdadm", "primary", "vm1"])
    assert argv[0] == "ssh" and "BatchMode=yes" in argv
    assert argv[-5:] == ["root@10.77.0.12", "--", "drbdadm", "primary", "vm1"]


@pytest.mark.parametrize("word", ["vm1;reboot", "$(id)", "a b", "`x`", "x|y", ""])
def test_ssh_argv_refuses_words_a_remote_shell_would_read(word):
    with pytest.raises(Invalid, match="remote shell"):
        migration.ssh_argv("10.77.0.12", ["drbdadm", "primary", word])


@pytest.mark.parametrize("ip", ["-oProxyCommand=x", "peer.example", "10.77.0.300", None])
def test_the_peer_address_must_be_an_ip(ip):
    with pytest.raises(Invalid, match="peer admin address"):
        migration.ssh_argv(ip, ["true"])


def test_limits_are_checked():
    assert migration.limits(30, 0, 600) == {"max_downtime": 30, "bandwidth": 0, "timeout": 600,
                                            "auto_converge": False}
    assert migration.limits(30, 0, 600, True)["auto_converge"] is True
    for bad in ({"max_downtime": 0}, {"bandwidth": -1}, {"timeout": "soon"}, {"max_downtime": True},
                {"auto_converge": "yes"}):
        values = dict({"max_downtime": 30, "bandwidth": 0, "timeout": 600}, **bad)
        with pytest.raises(Invalid, match=next(iter(bad))):
            migration.limits(**values)


def test_flags_converge_unless_told_not_to():
    base = ["VIR_MIGRATE_LIVE", "VIR_MIGRATE_PEER2PEER", "VIR_MIGRATE_PERSIST_DEST",
            "VIR_MIGRATE_UNDEFINE_SOURCE"]
    assert migration.flag_names(True) == base + ["VIR_MIGRATE_AUTO_CONVERGE"]
    assert migration.flag_names(False) == base


def test_uris():
    assert migration.peer_uri("10.77.0.12") == "qemu+ssh://root@10.77.0.12/system"
    assert migration.migrate_uri("10.77.0.12") == "tcp://10.77.0.12"
    assert migration.migrate_uri("fd00::2") == "tcp://[fd00::2]"


def test_disc_cache_is_read_from_the_disc_not_the_cdrom():
    xml = ("<domain><devices><disk device='cdrom'><driver name='qemu' cache='writeback'/></disk>"
           "<disk type='block' device='disk'><driver name='qemu' type='raw' cache='none'/></disk>"
           "</devices></domain>")
    assert migration.disc_cache(xml) == "none"
    assert migration.disc_cache("<domain><devices><disk device='disk'/></devices></domain>") is None


def test_preflight_of_a_healthy_pair_has_no_problem():
    assert migration.preflight("vm1", "hostB", RECORD, GOOD) == []  # home: no away needed
    assert migration.preflight("vm1", "hostA", RECORD, GOOD, away=True) == []


@pytest.mark.parametrize("change, expected", [
    ({"running": False}, "is not running on hostA"),
    ({"drbd": {"connection": "StandAlone"}}, "StandAlone, not Connected"),
    ({"drbd": {}}, "down, not Connected"),
    ({"drbd": {"connection": "Connected", "disk": "UpToDate", "peer_disk": "Inconsistent"}},
     "UpToDate/Inconsistent, not UpToDate/UpToDate"),
    ({"cache": "writeback"}, "cache=writeback, not cache=none"),
    ({"peer_record_same": False}, "/machines/vm1 differs between hostA and hostB"),
    ({"peer_bridge": False}, "bridge br0 does not exist on hostB"),
    ({"peer_running": True}, "is running on hostB too"),
    ({"peer_free_mib": 100}, "hostB has 100 MiB of memory free, VM vm1 needs 512 MiB"),
    ({"peer_libvirt": "connection refused"}, "libvirt on hostB does not answer: connection refused"),
])
def test_preflight_names_each_problem(change, expected):
    problems = migration.preflight("vm1", "hostA", RECORD, dict(GOOD, **change), away=True)
    assert len(problems) == 1 and expected in problems[0], problems


def test_preflight_away_from_home_needs_away():
    problems = migration.preflight("vm1", "hostA", RECORD, GOOD)
    assert problems == ["hostB is not VM vm1's home (hostA): pass away=True (pairvm swaplive vm1 --away) "
                        "to run it there"]


def test_job_progress_and_completed_figures():
    assert migration.progress({"type": 0}) is None and migration.progress(None) is None
    running = {"type": 2, "data_total": 1000, "data_processed": 400, "data_remaining": 600}
    assert migration.progress(running) == (400, 1000, 600)
    assert migration.progress({"type": 2, "memory_total": 10, "memory_processed": 3,
                               "memory_remaining": 7}) == (3, 10, 7)
    done = {"type": 3, "time_elapsed": 830, "downtime": 41, "setup_time": 5, "data_processed": 9000}
    assert migration.completed(done) == {"time_ms": 830, "downtime_ms": 41, "setup_ms": 5, "bytes": 9000}
    assert migration.completed({})["downtime_ms"] is None


@pytest.mark.parametrize("here, there, expected", [
    (True, False, ("finish", "hostA", "hostB")),
    (False, True, ("finish", "hostB", "hostA")),
])
def test_cleanup_finishes_where_the_vm_runs(here, there, expected):
    assert migration.cleanup_action("vm1", "hostA", "hostB", here, there) == expected


def test_cleanup_refuses_both_and_says_neither():
    verdict, text = migration.cleanup_action("vm1", "hostA", "hostB", True, True)
    assert verdict == "refuse" and "BOTH hostA and hostB" in text
    verdict, text = migration.cleanup_action("vm1", "hostA", "hostB", False, False)
    assert verdict == "nothing" and "runs on neither hostA nor hostB" in text
