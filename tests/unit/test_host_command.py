"""The host command's presentation (salt/pairvm/files/pairvm)."""

from tests.unit.conftest import load

cli = load("salt/pairvm/files/pairvm", "pairvm_cli")

RESULT = {
    "vms": [{
        "name": "vm1", "memory": 256, "disc": "1G", "running": True, "location": "home",
        "vnc_display": 3, "drbd_connection": "Connected", "drbd_disk": "UpToDate",
        "mac": "52:54:00:00:00:01", "ip": "10.79.0.10",
    }],
    "memory": {"here": 256, "there": 0, "running": 256, "cap": 2048},
}


def test_list_table_aligns_columns_and_ends_with_ram_totals():
    lines = cli.format_list(RESULT).splitlines()
    assert lines[0].split() == ["NAME", "MEM", "DISC", "RUN", "WHERE", "VNC", "DRBD", "DISK", "MAC", "IP"]
    assert lines[1].split() == ["vm1", "256", "1G", "yes", "home", "3", "Connected", "UpToDate",
                                "52:54:00:00:00:01", "10.79.0.10"]
    assert lines[0].index("MAC") == lines[1].index("52:54")
    assert lines[-1] == "RAM here: 256 MiB  there: 0 MiB  running here: 256 MiB  cap: 2048"


def test_list_table_with_fields_shows_only_those_columns():
    result = {"vms": [{"name": "vm1", "ip": "10.79.0.10"}], "memory": RESULT["memory"]}
    assert cli.format_list(result).splitlines()[0].split() == ["NAME", "IP"]


def test_empty_list_says_so():
    result = {"vms": [], "memory": {"here": 0, "there": 0, "running": 0, "cap": 0}}
    out = cli.format_list(result)
    assert "(no VMs on this host)" in out and out.endswith("cap: none")


def test_help_lists_commands_and_explains_one(capsys):
    assert cli.main(["help"]) == 0
    assert "check_system" in capsys.readouterr().out
    assert cli.main(["help", "list"]) == 0
    assert capsys.readouterr().out.startswith("usage: pairvm list [FIELD,...]")


def test_unknown_command_is_refused_with_its_name(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_check_report_marks_failures():
    report = {"ok": False, "checks": {"bridge": {"ok": False, "detail": "bridge br0 does not exist"}}}
    out = cli.format_check(report)
    assert "FAIL  bridge" in out and out.endswith("host is NOT ready for pairvm")
