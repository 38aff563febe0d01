"""pairvmlib.drbdconf: DRBD 8.4's running configuration (drbdsetup show) parsed."""

from pairvmlib import drbdconf

SHOW_ALL = (
    'resource vm1 {\n    net {\n        cram-hmac-alg       "sha1";\n        shared-secret       "s3";\n'
    '        allow-two-primaries\tyes;\n    }\n    _remote_host {\n        address ipv4 10.78.0.12:7790;\n'
    '    }\n}\n\n'
    'resource vm2 {\n    net {\n        protocol C;\n    }\n    _remote_host {\n'
    '        address ipv4 10.78.0.12:7791;\n    }\n}\n'
    'resource vm10 {\n    net {\n        allow-two-primaries yes;\n        cram-hmac-alg "sha1";\n    }\n}\n'
)


def test_each_resource_block_is_its_own():
    blocks = drbdconf.resources(SHOW_ALL)
    assert list(blocks) == ["vm1", "vm2", "vm10"]
    assert "7791" in blocks["vm2"] and "7791" not in blocks["vm1"]
    assert drbdconf.resources("") == {}


def test_peer_auth_needs_the_algorithm_and_the_secret_of_a_connected_resource():
    # vm10 has no connection configured (no _remote_host): not reported
    assert drbdconf.peer_auth(SHOW_ALL) == {"vm1": True, "vm2": False}
    only_alg = SHOW_ALL.replace('shared-secret       "s3";', "")
    assert drbdconf.peer_auth(only_alg)["vm1"] is False


def test_two_primaries_in_drbdsetup_show():
    assert drbdconf.two_primaries("resource vm1 {\n    net {\n        allow-two-primaries\tyes;\n")
    assert not drbdconf.two_primaries("resource vm1 {\n    net {\n        allow-two-primaries no;\n")
    assert not drbdconf.two_primaries("resource vm1 {\n    net {\n        protocol C;\n")


def test_the_resources_of_drbdsetup_show_all_that_allow_two_primaries():
    assert drbdconf.two_primaries_resources(SHOW_ALL) == ["vm1", "vm10"]
    assert drbdconf.two_primaries_resources("") == []
