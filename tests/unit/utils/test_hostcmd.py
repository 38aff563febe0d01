"""The host command (pairvmlib.hostcmd, its table pairvmlib.commands): arguments, the
salt-call argv, help from the functions' docstrings, output, exit codes.

subprocess.run and os.execvp are replaced: nothing here runs salt-call or virsh.
"""

import crypt
import io
import json
import os
import subprocess

import pytest

from pairvmlib import commands, hostcmd, layout
from salt.utils.args import parse_input
from tests.unit.fakehost import PAIRVM

RESULT = {
    "vms": [{
        "name": "vm1", "memory": 256, "disc": "1G", "running": True, "location": "home",
        "vnc_display": 3, "drbd_connection": "Connected", "drbd_disk": "UpToDate",
        "mac": "52:54:00:00:00:01", "ip": "10.79.0.10",
    }],
    "memory": {"here": 256, "there": 0, "running": 256, "cap": 2048},
}
OLD_COMMANDS = (
    "first_time_setup help create destroy start stop list cdrom image serial backup resize swap "
    "swaplive split_brain_victim autostart suppress monitor graphite_stats print_ssh_forwards chkconfig"
).split()


DOCS = {f"pairvm.{name}": func.__doc__ for name, func in vars(PAIRVM).items()}


@pytest.fixture(autouse=True)
def no_host_view(tmp_path, monkeypatch):
    """This machine's own /machines is never read: one of the test's, with the records of
    vm1 and vm2 only."""
    machines = tmp_path / "machines"
    machines.mkdir()
    for name in ("vm1", "vm2"):
        (machines / name).write_text("name: " + name + "\n")
    monkeypatch.setattr(layout, "MACHINES_DIR", str(machines))


PLAINTEXT = "correct horse battery staple"
HASH = crypt.crypt(PLAINTEXT, crypt.mksalt(crypt.METHOD_SHA512))
TOKEN = "0123456789abcdef" * 2


class Replaced(Exception):
    """Stands for os.execvp replacing the process: control never comes back."""


@pytest.fixture
def salt(monkeypatch):
    """Fake salt-call: set ``salt.result`` / ``salt.stderr`` / ``salt.rc``; ``salt.calls`` has the argvs."""

    class Fake:
        result, stdout, stderr, rc = {"name": "vm1", "changes": [], "comment": ""}, None, "", 0
        calls, kwargs, execs, polls, pending = [], [], [], [], 0
        config = {"master": "salt.example.net", "master_port": 4506}
        start = {"job": TOKEN, "comment": "started"}

        def run(self, argv, **kwargs):
            if argv[argv.index("--") + 1] == "sys.doc":  # help: the real functions' docstrings
                return subprocess.CompletedProcess(argv, 0, json.dumps({"local": DOCS}), "")
            if argv[argv.index("--") + 1] == "config.items":  # the master's address, for runners
                return subprocess.CompletedProcess(argv, 0, json.dumps({"local": self.config}), "")
            if "fun=pairvm.host_job" in argv:  # asks for a job's result: done after `pending` asks
                self.polls.append(argv)
                done = len(self.polls) > self.pending
                answer = {"done": True, "result": self.result} if done else {"done": False}
                return subprocess.CompletedProcess(argv, 0, json.dumps({"local": answer}), "")
            if argv[argv.index("--") + 1] == "publish.runner":  # a host_* runner starts a job
                self.calls.append(argv)
                return subprocess.CompletedProcess(argv, 0, json.dumps({"local": self.start}), "")
            self.calls.append(argv)
            self.kwargs.append(kwargs)
            stdout = self.stdout if self.stdout is not None else json.dumps({"local": self.result})
            return subprocess.CompletedProcess(argv, self.rc, stdout, self.stderr)

        def execvp(self, file, argv):
            self.execs.append((file, argv))
            raise Replaced

    fake = Fake()
    monkeypatch.setattr(hostcmd.subprocess, "run", fake.run)
    monkeypatch.setattr(hostcmd.os, "execvp", fake.execvp)
    return fake


def call_of(argv):
    """(function, args after it, --no-parse keys) of one salt-call argv."""
    cut = argv.index("--")
    no_parse = [a.split("=", 1)[1].split(",") for a in argv[:cut] if a.startswith("--no-parse=")]
    return argv[cut + 1], argv[cut + 2:], no_parse[0] if no_parse else []


# --- the salt-call argv of every command ---------------------------------------------------


@pytest.mark.parametrize(("argv", "function", "args"), [
    (["list"], "pairvm.list", []),
    (["list", "name,ip"], "pairvm.list", ["fields=name,ip"]),
    (["check_system"], "pairvm.check_system", []),
    (["create", "vm1"], "pairvm.create", ["name=vm1"]),
    (["destroy", "vm1", "--yes-really"], "pairvm.destroy", ["name=vm1", "confirm=True", "missing_ok=False"]),
    (["destroy", "--force", "vm1", "--yes-really"], "pairvm.destroy",
     ["name=vm1", "confirm=True", "missing_ok=False", "force=True"]),
    (["start", "vm1"], "pairvm.start", ["name=vm1"]),
    (["start", "vm1", "--away"], "pairvm.start", ["name=vm1", "away=True"]),
    (["start", "vm1", "--disconnected", "--away"], "pairvm.start",
     ["name=vm1", "away=True", "disconnected=True"]),
    (["stop", "vm1"], "pairvm.stop", ["name=vm1"]),
    (["stop", "vm1", "--graceful"], "pairvm.stop", ["name=vm1", "graceful=True"]),
    (["stop", "vm1", "--graceful", "30"], "pairvm.stop", ["name=vm1", "timeout=30", "graceful=True"]),
    (["cdrom", "vm1"], "pairvm.cdrom", ["name=vm1"]),
    (["serial", "vm1", "--log"], "pairvm.serial", ["name=vm1"]),
    (["serial", "vm1", "--log", "20"], "pairvm.serial", ["name=vm1", "lines=20"]),
    (["resize", "vm1", "20G"], "pairvm.resize", ["name=vm1", "size=20G"]),
    (["suppress", "vm1"], "pairvm.suppress", ["name=vm1"]),
    (["suppress", "vm1", "on"], "pairvm.suppress", ["name=vm1", "on=True"]),
    (["suppress", "vm1", "off"], "pairvm.suppress", ["name=vm1", "on=False"]),
    (["split_brain_victim", "vm1"], "pairvm.split_brain_victim", ["name=vm1"]),
    (["split_brain_victim", "vm1", "2G"], "pairvm.split_brain_victim", ["name=vm1", "snapshot_size=2G"]),
    (["split_brain_victim", "vm1", "--no-snapshot"], "pairvm.split_brain_victim",
     ["name=vm1", "snapshot=False"]),
    (["autostart"], "pairvm.autostart", []),
    (["monitor", "vm1", "info status"], "pairvm.monitor", ["name=vm1", "command=info status"]),
    (["print_ssh_forwards"], "pairvm.print_ssh_forwards", []),
])
def test_each_command_builds_its_salt_call(salt, argv, function, args):
    salt.result = {"name": "vm1", "changes": [], "comment": "", "cdrom": None, **RESULT,
                   "ok": True, "checks": {}}
    assert hostcmd.main(argv) == 0
    (called,) = salt.calls
    assert call_of(called)[:2] == (function, args)


def test_the_whole_argv_is_a_list_for_salt_call_local_with_json_out(salt):
    hostcmd.main(["start", "vm1", "--away"])
    assert salt.calls == [[
        "salt-call", "--local", "--config-dir=/etc/salt", "--out=json",
        "--retcode-passthrough", "--log-level=quiet", "--no-parse=name",
        "--", "pairvm.start", "name=vm1", "away=True",
    ]]
    assert not salt.kwargs[0].get("shell")


@pytest.mark.parametrize(("argv", "strings"), [
    (["create", "vm1"], ["name"]),
    (["resize", "vm1", "2G"], ["name", "size"]),
    (["monitor", "vm1", "info status"], ["name", "command"]),
    (["list", "name"], ["fields"]),
    (["stop", "vm1", "--graceful", "9"], ["name"]),
])
def test_every_user_string_is_listed_in_no_parse_and_nothing_else(salt, argv, strings):
    hostcmd.main(argv)
    assert call_of(salt.calls[0])[2] == strings


@pytest.mark.parametrize(("argv", "expected"), [
    # YAML would read these names as True/False/None: --no-parse keeps them names.
    (["start", "on"], {"name": "on"}),
    (["start", "null"], {"name": "null"}),
    (["create", "no"], {"name": "no"}),
    # A value that looks like another kwarg stays inside its own kwarg.
    (["monitor", "vm1", "confirm=True"], {"name": "vm1", "command": "confirm=True"}),
    (["monitor", "vm1", "x force=True"], {"name": "vm1", "command": "x force=True"}),
    (["resize", "vm1", "force=True"], {"name": "vm1", "size": "force=True"}),
    # Values YAML would turn into other types arrive as the string typed.
    (["monitor", "vm1", "[1, 2]"], {"name": "vm1", "command": "[1, 2]"}),
    (["monitor", "vm1", "{a: 1}"], {"name": "vm1", "command": "{a: 1}"}),
    (["monitor", "vm1", "info # x"], {"name": "vm1", "command": "info # x"}),
    (["resize", "vm1", "1_000"], {"name": "vm1", "size": "1_000"}),
    # What the script itself builds is typed.
    (["stop", "vm1", "--graceful", "30"], {"name": "vm1", "graceful": True, "timeout": 30}),
    (["suppress", "vm1", "off"], {"name": "vm1", "on": False}),
])
def test_salt_decodes_the_argv_to_exactly_the_intended_kwargs(salt, argv, expected):
    """Feed the built argv to Salt's own CLI argument parser (what salt-call does)."""
    hostcmd.main(argv)
    _, args, no_parse = call_of(salt.calls[0])
    positional, kwargs = parse_input(args, condition=False, no_parse=no_parse)
    assert positional == []
    assert kwargs == expected




# --- refused before anything runs -----------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["start", "x;y"], ["start", "vm1;reboot"], ["start", "$(reboot)"], ["start", "`id`"],
    ["start", "vm 1"], ["start", "vm1|x"], ["start", "../etc"], ["start", ".."], ["start", "a/b"],
    ["start", "a" * 13], ["start", "VM1"], ["start", "1vm"], ["start", "vm_1"], ["start", "vm1\n"],
    ["start", "vm1=x"], ["start", "name=vm1"], ["start", ""], ["start", "vmé"],
    ["start", "-rf"], ["start", "--local"], ["start", "vm1", "--awy"], ["start", "vm1", "--away=1"],
    ["start"], ["start", "vm1", "vm2"], ["create", "vm1", "confirm=True"], ["create", "vm1", "--force"],
    ["destroy", "vm1"], ["destroy", "vm1", "--force"], ["destroy", "vm1", "--yes"],
    ["destroy", "-vm1", "--yes-really"],
    ["stop", "vm1", "30"], ["stop", "vm1", "--graceful", "0"], ["stop", "vm1", "--graceful", "1e3"],
    ["stop", "vm1", "--graceful", "-5"], ["stop", "vm1", "--graceful", "99999999"],
    ["stop", "vm1", "--graceful", "²"], ["stop", "vm1", "--graceful", "3", "4"],
    ["cdrom", "vm1", "-x.iso"], ["cdrom", "vm1", "--eject"], ["cdrom", "vm1", "a.iso", "b.iso"],
    ["cdrom", "vm1", "/nonexistent/x.iso"], ["cdrom", "vm1", "/"],
    ["create", "vm1", "here"], ["create", "vm1", "where", "1024", "10G"],
    ["create", "vm1", "here", "1G", "10G"],
    ["create", "vm1", "here", "0", "10G"], ["create", "vm1", "here", "1024", "10X"],
    ["create", "vm1", "here", "1024", "1M"], ["create", "vm1", "here", "1024", "10G", "--ip", "10.0.0"],
    ["create", "vm1", "here", "1024", "10G", "--vcpus", "65"],
    ["create", "vm1", "here", "1024", "10G", "--ip"],
    ["create", "vm1", "here", "1024", "10G", "x"], ["create", "Vm1", "here", "1024", "10G"],
    ["chkconfig", "vm1", "vm2"], ["chkconfig", "x;y"],
    ["resize", "vm1"], ["resize", "vm1", "-5G"], ["resize", "vm1", "20G\nforce=True"],
    ["resize", "vm1", "20G\x00"],
    ["suppress", "vm1", "maybe"], ["suppress", "vm1", "True"],
    ["monitor", "vm1"], ["monitor", "vm1", "info", "status"], ["monitor", "vm1", "-x"],
    ["monitor", "vm1", "info\nquit"],
    ["serial", "vm1", "5"], ["serial", "vm1", "--log", "x"], ["serial", "vm1", "--log", "0"],
    ["serial", "x;y"], ["serial", "vm1", "--follow"],
    ["list", "a", "b"], ["list", "--fields=x"], ["list", "-x"],
    ["check_system", "vm1"], ["autostart", "vm1"], ["print_ssh_forwards", "x"],
    ["first_time_setup", "now"], ["help", "frobnicate"], ["help", "a", "b"],
    [], ["frobnicate"], ["--local"], ["swap"], ["swap", "vm1", "hostB"], ["swap", "Vm1"],
    ["image", "vm1", "d", "-", "--firstboot", "/nonexistent/script"], ["image", "vm1", "d", "--hostname"],
])
def test_bad_arguments_exit_2_before_anything_runs(salt, capsys, argv):
    assert hostcmd.main(argv) == 2
    out, err = capsys.readouterr()
    assert salt.calls == [] and salt.execs == []
    assert out == ""
    assert err.startswith(("pairvm: ", "usage: pairvm"))


@pytest.mark.parametrize("bad", ["x;y", "../vm", "a" * 13, "Vm1", "vm1 && reboot"])
def test_an_invalid_name_is_named_in_the_error(salt, capsys, bad):
    assert hostcmd.main(["start", bad]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pairvm: invalid VM name {bad!r}: must be 1 to 12 characters")
    assert "usage: pairvm start NAME [--away] [--disconnected]" in err


def test_a_value_starting_with_dash_is_an_unknown_option(salt, capsys):
    assert hostcmd.main(["resize", "vm1", "-5G"]) == 2
    assert capsys.readouterr().err.startswith("pairvm: unknown option '-5G'")


def test_salt_argv_refuses_dash_and_control_characters_whatever_the_caller():
    with pytest.raises(commands.Usage):
        hostcmd.salt_argv("pairvm.resize", {"name": "vm1", "size": "-5G"})
    with pytest.raises(commands.Usage):
        hostcmd.salt_argv("pairvm.monitor", {"name": "vm1", "command": "info\rquit"})


def test_destroy_without_confirmation_says_what_would_be_lost(salt, capsys):
    assert hostcmd.main(["destroy", "vm1", "--force"]) == 2
    err = capsys.readouterr().err
    assert salt.calls == []
    assert "vm1" in err and "THIS host" in err and "disc" in err and "cannot be undone" in err
    assert "pairvm destroy vm1 --yes-really" in err


def test_unknown_command_is_refused_with_its_name(capsys):
    assert hostcmd.main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'frobnicate'" in err and "usage: pairvm COMMAND" in err


# --- serial: the console is virsh's ---------------------------------------------------------


def test_serial_execs_virsh_console_after_saying_how_to_leave(salt, capsys):
    with pytest.raises(Replaced):
        hostcmd.main(["serial", "vm1"])
    assert salt.execs == [("virsh", ["virsh", "-c", "qemu:///system", "console", "vm1"])]
    assert salt.calls == []
    assert capsys.readouterr().out == "Connected to vm1's serial console; press Ctrl+] to leave.\n"


def test_serial_without_virsh_exits_1(salt, monkeypatch, capsys):
    def missing(file, argv):
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(hostcmd.os, "execvp", missing)
    assert hostcmd.main(["serial", "vm1"]) == 1
    assert capsys.readouterr().err == "pairvm: cannot run virsh: No such file or directory\n"


def test_serial_log_prints_the_lines_as_they_are(salt, capsys):
    salt.result = "boot: ok\nlogin: \n"
    assert hostcmd.main(["serial", "vm1", "--log", "2"]) == 0
    assert salt.execs == []
    assert capsys.readouterr().out == "boot: ok\nlogin: \n"


# --- help ------------------------------------------------------------------------------------


def test_help_lists_every_command_of_the_old_tool(salt, capsys):
    assert hostcmd.main(["help"]) == 0
    out = capsys.readouterr().out
    listed = {line.split()[0] for line in out.splitlines() if line.startswith("  ") and line[2] != " "}
    assert set(OLD_COMMANDS) | {"check_system"} <= listed
    assert "not yet available" not in out  # every command of the old tool is there (swap was the last)


@pytest.mark.parametrize("command", sorted(commands.COMMANDS))
def test_help_explains_each_command(salt, capsys, command):
    assert hostcmd.main(["help", command]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: pairvm {command}") and len(out.splitlines()) >= 3
    assert hostcmd.main([command, "--help"]) == 0
    assert capsys.readouterr().out == out


def test_help_options(salt, capsys):
    assert hostcmd.main(["--help"]) == 0
    capsys.readouterr()
    assert hostcmd.main(["-h", "list"]) == 0
    out = capsys.readouterr().out
    assert out.split("\n\n")[1].startswith("List the VMs this host knows, with their runtime state.")
    assert hostcmd.main(["help", "list"]) == 0
    assert capsys.readouterr().out == out and out.startswith("usage: pairvm list [FIELD,...]")


def test_help_is_the_functions_docstring_without_its_salt_examples(salt, capsys):
    assert hostcmd.main(["help", "start"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: pairvm start NAME [--away] [--disconnected]\n"
                          "  --away             away=True\n")
    assert "Only on its home host unless away=True." in out
    assert "CLI Example" not in out and "salt hostA pairvm.start" not in out
    assert "(Runs pairvm.start on this host, without the master;" in out


def test_help_lists_whole_sentences(salt, capsys):
    hostcmd.main(["help"])
    out = capsys.readouterr().out
    summaries = [line.strip() for line in out.splitlines() if line.startswith("      ")]
    assert len(summaries) == len(commands.TABLE)
    assert all(text.endswith(".") and "``" not in text for text in summaries), summaries
    assert "Grow VM name's LV on this host to size (e.g. 20G); never shrink." in summaries


def test_help_without_salt_still_lists_the_commands(capsys, monkeypatch):
    def missing(argv, **kwargs):
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(hostcmd.subprocess, "run", missing)
    assert hostcmd.main(["help"]) == 0
    assert "  start NAME [--away] [--disconnected]" in capsys.readouterr().out


def test_no_command_prints_usage_to_stderr(capsys):
    assert hostcmd.main([]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("usage: pairvm COMMAND")


# --- errors and exit codes -------------------------------------------------------------------


@pytest.mark.parametrize(("stderr", "message"), [
    ("Error running 'pairvm.start': vm1 runs on hostB; stop it there first\n",
     "vm1 runs on hostB; stop it there first"),
    ("some warning\nError running 'pairvm.start': line one\nline two\n", "line one\nline two"),
    ("\nPassed invalid arguments: invalid VM name 'x'.\n\nUsage:\n", "invalid VM name 'x'"),
    ("\nPassed invalid arguments: Say so...\n\nUsage:\nThe docstring\n", "Say so.."),
    ("Traceback (most recent call last):\n  File x\nValueError: oops\n",
     "pairvm.start crashed: ValueError: oops"),
    ("x.py:35: DeprecationWarning: 'crypt' is deprecated\n  import crypt\n'pairvm.start' is not available.\n",
     "'pairvm.start' is not available. Are the formula's modules synced (salt HOST saltutil.sync_all)?"),
    ("", "pairvm.start failed and said nothing"),
])
def test_a_function_error_exits_1_with_its_clean_message(salt, capsys, stderr, message):
    salt.stdout, salt.stderr, salt.rc = "", stderr, 1
    assert hostcmd.main(["start", "vm1"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"pairvm: {message}\n"


def test_an_error_string_in_json_exits_1(salt, capsys):
    salt.result, salt.rc = "something went wrong", 1
    assert hostcmd.main(["start", "vm1"]) == 1
    assert capsys.readouterr().err == "pairvm: something went wrong\n"


def test_missing_salt_call_exits_1(monkeypatch, capsys):
    def missing(argv, **kwargs):
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(hostcmd.subprocess, "run", missing)
    assert hostcmd.main(["list"]) == 1
    assert capsys.readouterr().err == "pairvm: cannot run salt-call: No such file or directory\n"


def test_a_failed_check_prints_the_report_and_exits_1(salt, capsys):
    salt.result, salt.rc = {"ok": False, "checks": {"bridge": {"ok": False, "detail": "no br0"}}}, 1
    assert hostcmd.main(["check_system"]) == 1
    assert "FAIL  bridge" in capsys.readouterr().out


def test_an_unexpected_result_is_shown_raw(salt, capsys):
    salt.result = True
    assert hostcmd.main(["start", "vm1"]) == 0
    assert capsys.readouterr().out == "true\n"


# --- formatters ------------------------------------------------------------------------------


def test_changes_are_printed_one_a_line_then_the_comment(salt, capsys):
    salt.result = {"name": "vm1", "changes": ["drbdadm primary vm1", "virsh start vm1"],
                   "comment": "vm1 started"}
    assert hostcmd.main(["start", "vm1"]) == 0
    assert capsys.readouterr().out == "  drbdadm primary vm1\n  virsh start vm1\nvm1 started\n"


def test_no_changes_says_nothing_to_do(salt, capsys):
    salt.result = {"name": "vm1", "changes": [], "comment": "vm1 is already running"}
    assert hostcmd.main(["start", "vm1"]) == 0
    assert capsys.readouterr().out == "vm1: nothing to do (vm1 is already running)\n"
    assert hostcmd.format_changes({"name": "vm1", "changes": [], "comment": ""}) == "vm1: nothing to do"


def test_cdrom_shows_the_image_or_none(salt, capsys):
    salt.result = {"name": "vm1", "cdrom": "/srv/iso/d.iso", "changes": [], "running": True}
    assert hostcmd.main(["cdrom", "vm1"]) == 0
    assert capsys.readouterr().out == "vm1: cdrom /srv/iso/d.iso\n"
    salt.result = {"name": "vm1", "cdrom": None, "changes": [], "running": False}
    assert hostcmd.main(["cdrom", "vm1"]) == 0
    assert capsys.readouterr().out == "vm1: no cdrom (at its next start)\n"


def test_autostart_reports_each_vm(salt, capsys):
    salt.result = {
        "vm1": {"changes": ["drbdadm up vm1", "virsh start vm1"], "comment": "ok"},
        "vm2": {"changes": [], "comment": "ok"},
        "vm3": {"changes": ["drbdadm up vm3"], "comment": "not started: vm3 is running on hostB"},
    }
    assert hostcmd.main(["autostart"]) == 0
    assert capsys.readouterr().out == (
        "vm1: ok\n  drbdadm up vm1\n  virsh start vm1\nvm2: nothing to do (ok)\n"
        "vm3: not started: vm3 is running on hostB\n  drbdadm up vm3\n"
    )
    assert hostcmd.format_autostart({}) == "autostart: no VMs on this host"
    assert hostcmd.format_autostart({"name": "x", "changes": [], "comment": "c"}) == "x: nothing to do (c)"


@pytest.mark.parametrize("argv", [["monitor", "vm1", "info status"], ["print_ssh_forwards"]])
def test_text_results_are_printed_as_they_are(salt, capsys, argv):
    salt.result = "VM status: running\n-L 5903:127.0.0.1:5903"
    assert hostcmd.main(argv) == 0
    assert capsys.readouterr().out == "VM status: running\n-L 5903:127.0.0.1:5903\n"


def test_list_table_aligns_columns_and_ends_with_ram_totals():
    lines = hostcmd.format_list(RESULT).splitlines()
    assert lines[0].split() == ["NAME", "MEM", "DISC", "RUN", "WHERE", "VNC", "DRBD", "DISK", "MAC", "IP"]
    assert lines[1].split() == ["vm1", "256", "1G", "yes", "home", "3", "Connected", "UpToDate",
                                "52:54:00:00:00:01", "10.79.0.10"]
    assert lines[0].index("MAC") == lines[1].index("52:54")
    assert lines[-1] == "RAM here: 256 MiB  there: 0 MiB  running here: 256 MiB  cap: 2048"


def test_list_table_with_fields_shows_only_those_columns():
    result = {"vms": [{"name": "vm1", "ip": "10.79.0.10"}], "memory": RESULT["memory"]}
    assert hostcmd.format_list(result).splitlines()[0].split() == ["NAME", "IP"]


def test_empty_list_says_so():
    result = {"vms": [], "memory": {"here": 0, "there": 0, "running": 0, "cap": 0}}
    out = hostcmd.format_list(result)
    assert "(no VMs on this host)" in out and out.endswith("cap: none")


def test_check_report_marks_failures():
    report = {"ok": False, "checks": {"bridge": {"ok": False, "detail": "bridge br0 does not exist"}}}
    out = hostcmd.format_check(report)
    assert "FAIL  bridge" in out and out.endswith("host is NOT ready for pairvm")


def test_only_create_and_image_ask_the_master_everything_else_runs_locally(salt):
    hostcmd.main(["create", "vm1"])
    assert "--local" not in salt.calls[-1]
    for argv in (["start", "vm1"], ["list"], ["stop", "vm1"], ["destroy", "vm1", "--yes-really"]):
        hostcmd.main(argv)
        assert "--local" in salt.calls[-1]
    assert {c.name for c in commands.TABLE if c.master} == {"create", "image"}


# --- first_time_setup: the way to the host state, and check_system's checks ------------------------

READY = {"ok": True, "checks": {
    "host": {"ok": True, "detail": "this host is hostA, its peer hostB"},
    "bridge": {"ok": True, "detail": "bridge br0 is up (operstate up)"},
}}


@pytest.fixture
def minion_dir(tmp_path):
    (tmp_path / "salt").mkdir()
    (tmp_path / "salt" / "minion_id").write_text("hostA\n")
    return tmp_path / "salt"


def test_first_time_setup_points_at_the_state_and_runs_check_system(salt, capsys, minion_dir):
    salt.result = READY
    assert hostcmd.main(["first_time_setup"], salt_config_dir=str(minion_dir)) == 0
    out = capsys.readouterr().out
    assert "Host setup is a Salt state" in out and "    salt hostA state.apply pairvm.host\n" in out
    assert "ok    bridge         bridge br0 is up (operstate up)" in out
    assert out.rstrip().endswith("all checks passed: this host is ready for pairvm.")
    (called,) = salt.calls
    assert call_of(called)[:2] == ("pairvm.check_system", []) and "--local" in called
    assert f"--config-dir={minion_dir}" in called


def test_first_time_setup_and_check_system_run_the_same_checks(salt, capsys, minion_dir):
    salt.result = READY
    hostcmd.main(["first_time_setup"], salt_config_dir=str(minion_dir))
    hostcmd.main(["check_system"], salt_config_dir=str(minion_dir))
    assert call_of(salt.calls[0]) == call_of(salt.calls[1])


def test_first_time_setup_names_the_failing_checks_and_exits_1(salt, capsys, minion_dir):
    salt.result = {"ok": False, "checks": {**READY["checks"],
                                           "peer": {"ok": False, "detail": "hostB does not answer ping"}}}
    salt.rc = 1
    assert hostcmd.main(["first_time_setup"], salt_config_dir=str(minion_dir)) == 1
    out = capsys.readouterr().out
    assert "FAIL  peer           hostB does not answer ping" in out
    assert "1 check failed: this host is NOT ready for pairvm." in out


def test_first_time_setup_takes_the_minion_id_from_the_view_or_says_host(salt, capsys, minion_dir):
    salt.result = READY
    (minion_dir / "minion_id").unlink()
    machines = layout.MACHINES_DIR
    with open(f"{machines}/_global", "w") as fh:
        json.dump({"me": "hostQ"}, fh)
    hostcmd.main(["first_time_setup"], salt_config_dir=str(minion_dir))
    assert "salt hostQ state.apply pairvm.host" in capsys.readouterr().out
    os.unlink(f"{machines}/_global")
    hostcmd.main(["first_time_setup"], salt_config_dir=str(minion_dir))
    assert "salt HOST state.apply pairvm.host" in capsys.readouterr().out


# --- backup, restore, verify_backup: they show progress while salt-call runs ----------------


@pytest.fixture
def streamed(monkeypatch):
    """Fake run_showing_progress (the path of commands with progress=True)."""
    calls = []

    def run(argv):
        calls.append(argv)
        result = {"name": "vm1", "changes": ["lvcreate -s"], "comment": "VM vm1 backed up",
                  "bytes": 1024, "sent": 100, "seconds": 1.0, "sha256": "ab" * 32}
        return subprocess.CompletedProcess(argv, 0, json.dumps({"local": result}), "")

    monkeypatch.setattr(hostcmd, "run_showing_progress", run)
    return calls


@pytest.mark.parametrize(("argv", "function", "args"), [
    (["backup", "vm1", "bk@store:/b/vm1.gz"], "pairvm.backup",
     ["name=vm1", "destination=bk@store:/b/vm1.gz"]),
    (["backup", "all", "bk@store:/b/_NAME.gz", "1024"], "pairvm.backup",
     ["name=all", "destination=bk@store:/b/_NAME.gz", "speed=1024"]),
    (["backup", "vm1", "bk@store:/b/vm1.zst", "0", "--zstd", "--on-running-host"], "pairvm.backup",
     ["name=vm1", "destination=bk@store:/b/vm1.zst", "speed=0", "compress=zstd", "on_running_host=True"]),
    (["restore", "vm2", "bk@store:/b/vm1.gz", "--yes-really"], "pairvm.restore",
     ["name=vm2", "source=bk@store:/b/vm1.gz", "confirm=True"]),
    (["verify_backup", "bk@store:/b/_NAME.gz", "vm1"], "pairvm.verify_backup",
     ["source=bk@store:/b/_NAME.gz", "name=vm1"]),
])
def test_backup_commands_build_their_salt_call_and_show_progress(streamed, salt, argv, function, args):
    assert hostcmd.main(argv) == 0
    (called,) = streamed
    assert call_of(called)[:2] == (function, args)
    assert salt.calls == []  # not through subprocess.run: the progress path


@pytest.mark.parametrize(("argv", "message"), [
    (["backup", "vm1"], "missing USER@HOST:/PATH"),
    (["backup", "vm1", "bk@h:/p", "fast"], "SPEED"),
    (["restore", "vm1", "bk@h:/p"], "--yes-really"),
    (["backup", "vm1", "-oProxyCommand=x@h:/p"], "unknown option"),
    (["verify_backup"], "missing USER@HOST:/PATH"),
])
def test_backup_commands_refuse_bad_arguments_before_salt(streamed, capsys, argv, message):
    assert hostcmd.main(argv) == 2
    assert message in capsys.readouterr().err and streamed == []


def test_backup_all_prints_one_line_per_vm():
    text = hostcmd.format_backup({"name": "vm1,vm2,vm3", "changes": [],
                              "comment": "backed up: vm1; FAILED: vm2",
                              "vms": {"vm1": {"result": True, "destination": "bk@h:/b/vm1.gz"},
                                      "vm2": {"result": False, "comment": "ssh failed"},
                                      "vm3": {"result": None, "comment": "skipped: it runs here"}}})
    assert text.splitlines() == [
        "vm1           ok       bk@h:/b/vm1.gz", "vm2           FAILED   ssh failed",
        "vm3           skipped  skipped: it runs here", "backed up: vm1; FAILED: vm2"]


@pytest.mark.parametrize("argv", [
    ["split_brain_victim", "vm1", "2G", "--no-snapshot"],
    ["split_brain_victim"],
    ["split_brain_victim", "vm1", "2G", "extra"],
    ["split_brain_victim", "vm1", "--discard"],
])
def test_split_brain_victim_wrong_usage_runs_nothing(salt, capsys, argv):
    assert hostcmd.main(argv) == 2
    assert salt.calls == []
    assert "usage: pairvm split_brain_victim NAME" in capsys.readouterr().err


# --- image: the password never leaves the host command in plain text ---------------------------


class Stdin(io.StringIO):
    def __init__(self, text, tty=False):
        super().__init__(text)
        self.tty = tty

    def isatty(self):
        return self.tty


def build_image(args):
    return "pairvm.image", hostcmd.prepare(commands.COMMANDS["image"], args, "/etc/salt")


def test_host_command_reads_the_password_from_stdin_and_passes_only_a_hash(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(hostcmd.sys, "stdin", Stdin(PLAINTEXT + "\n"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "setup.sh").write_text("#!/bin/sh\n")
    function, kwargs = build_image(["vm1", "bookworm", "-", "--firstboot", "setup.sh"])
    assert function == "pairvm.image" and kwargs["firstboot"] == f"{tmp_path}/setup.sh"
    assert "hostname" not in kwargs  # the VM's name, by default (pairvm.image)
    assert crypt.crypt(PLAINTEXT, kwargs["password"]) == kwargs["password"]
    argv = hostcmd.salt_argv(function, kwargs, local=False)
    assert "--local" not in argv and PLAINTEXT not in " ".join(argv)
    assert "password" in argv[argv.index("--") - 1]  # --no-parse: the hash passes verbatim
    assert capsys.readouterr().err == ""


def test_host_command_prompts_on_a_terminal(monkeypatch):
    monkeypatch.setattr(hostcmd.sys, "stdin", Stdin("", tty=True))
    answers = iter([PLAINTEXT, PLAINTEXT])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    _, kwargs = build_image(["vm1", "bookworm"])
    assert crypt.crypt(PLAINTEXT, kwargs["password"]) == kwargs["password"]


def test_host_command_warns_about_a_plaintext_argument_and_takes_a_hash_as_it_is(capsys):
    _, kwargs = build_image(["vm1", "bookworm", PLAINTEXT])
    assert kwargs["password"].startswith("$6$") and "process list" in capsys.readouterr().err
    _, kwargs = build_image(["vm1", "bookworm", HASH])
    assert kwargs["password"] == HASH and capsys.readouterr().err == ""


def test_host_command_hashes_with_openssl_without_crypt(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "crypt", None)  # import crypt -> ImportError
    hashed = hostcmd.sha512_crypt(PLAINTEXT)
    assert crypt.crypt(PLAINTEXT, hashed) == hashed


@pytest.mark.parametrize("argv, why", [
    (["vm1"], "missing DIST"),
    (["vm1", "d", "-", "x"], "unexpected argument 'x'"),
    (["vm1", "d", "h.org", "-"], "unexpected argument '-'"),
    (["vm1", "--now", "d"], "unknown option '--now'"),
    (["Bad", "d", HASH], "invalid VM name"),
    (["vm1", "d", HASH, "--hostname"], "--hostname needs a value"),
    (["vm1", "d", HASH, "--firstboot", "/nonexistent"], "/nonexistent does not exist"),
])
def test_host_command_usage_errors(argv, why):
    with pytest.raises(commands.Usage, match=why):
        build_image(argv)


def test_host_command_runs_image_with_progress(monkeypatch, capsys):
    calls = []

    def fake(argv):
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, json.dumps({"local": {
            "name": "vm1", "changes": ["copy x -> /dev/drbd0 (raw)"], "comment": "done"}}), "")

    monkeypatch.setattr(hostcmd, "run_showing_progress", fake)
    assert hostcmd.main(["image", "vm1", "bookworm", HASH, "--hostname=vm1.example.org"]) == 0
    assert calls and call_of(calls[0])[:2] == ("pairvm.image", [
        "name=vm1", "dist=bookworm", f"password={HASH}", "hostname=vm1.example.org"])
    assert "copy x" in capsys.readouterr().out


# --- progress lines ----------------------------------------------------------------------------


def test_host_command_shows_progress_lines_and_keeps_the_rest():
    out = io.StringIO()
    stream = io.StringIO("pairvm progress: backup vm1: 1 B\nwarning: x\npairvm progress: backup vm1: 2 B\n")
    rest = hostcmd.show_progress(stream, out=out)
    assert out.getvalue() == "backup vm1: 1 B\nbackup vm1: 2 B\n"
    assert rest == "warning: x\n"


# --- commands that run a runner on the master (publish.runner) ---------------------------------


@pytest.fixture
def master(salt, monkeypatch):
    """The master's port answers (or not: ``master.down = True``); ``master.probed`` lists
    the addresses tried."""

    class Probe:
        down, probed = False, []

        def connect(self, address, timeout=None):
            self.probed.append(address)
            if self.down:
                raise ConnectionRefusedError(111, "Connection refused")
            return io.BytesIO()

    probe = Probe()
    monkeypatch.setattr(hostcmd.socket, "create_connection", probe.connect)
    monkeypatch.setattr(hostcmd.time, "sleep", lambda seconds: None)
    return probe


def runner_kwargs(argv):
    """What the runner on the master receives: the argv decoded as salt-call, publish.runner and
    the master's minion_runner decode it (Salt's own functions)."""
    from salt.modules.publish import _parse_args

    function, args, no_parse = call_of(argv)
    assert function == "publish.runner" and "--local" not in argv
    _, outer = parse_input(args, condition=False, no_parse=no_parse)
    inner, kwargs = parse_input(_parse_args(outer["arg"]), condition=False, no_parse=no_parse)
    assert inner == []
    return outer["fun"], kwargs


CREATED = {"name": "vm1", "home": "hostA",
           "changes": {"hostA": {"changes": ["lvcreate -n vm1 here -L 10240M"]}, "hostB": {"changes": []}},
           "drbd": {}, "ip": "10.79.0.5", "mac": "52:54:00:00:00:05", "vnc_display": 3}


@pytest.mark.parametrize(("argv", "fun", "kwargs"), [
    (["create", "vm1", "here", "1024", "10G"], "pairvm.host_create",
     {"name": "vm1", "where": "here", "memory": 1024, "disc": "10G"}),
    (["create", "no", "there", "512", "1.5G", "--vcpus", "2", "--ip=10.79.0.50"], "pairvm.host_create",
     {"name": "no", "where": "there", "memory": 512, "disc": "1.5G", "vcpus": 2, "ip": "10.79.0.50"}),
    (["cdrom", "vm1", "eject"], "pairvm.host_cdrom", {"name": "vm1", "eject": True}),
    (["chkconfig"], "pairvm.host_chkconfig", {}),
    (["chkconfig", "null"], "pairvm.host_chkconfig", {"name": "null"}),
    (["swap", "vm1"], "pairvm.host_swap", {"name": "vm1"}),
])
def test_runner_commands_reach_the_master_with_exactly_the_intended_kwargs(salt, master, argv, fun, kwargs):
    salt.result = {**CREATED, "cdrom": None, "lines": [], "summary": "0 errors, 0 warnings", "comment": "ok"}
    salt.pending = 2  # the job runs a while: asked for three times
    assert hostcmd.main(argv) == 0
    (called,) = salt.calls
    assert runner_kwargs(called) == (fun, kwargs)
    assert [runner_kwargs(poll) for poll in salt.polls] == [("pairvm.host_job", {"token": TOKEN})] * 3
    assert master.probed == [("salt.example.net", 4506)]


def test_an_iso_is_a_readable_file_here_given_relative_to_where_the_operator_is(
        salt, master, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a=b #1.iso").write_bytes(b"CD001")
    salt.result = {"name": "vm1", "cdrom": f"{tmp_path}/a=b #1.iso", "comment": "done",
                   "changes": {"hostA": ["write /machines/vm1"], "hostB": ["write /machines/vm1"]}}
    assert hostcmd.main(["cdrom", "vm1", "a=b #1.iso"]) == 0
    assert runner_kwargs(salt.calls[0]) == ("pairvm.host_cdrom",
                                            {"name": "vm1", "iso": f"{tmp_path}/a=b #1.iso"})


@pytest.mark.parametrize(("path", "why"), [("missing.iso", "does not exist"), (".", "is not a file"),
                                           ("locked.iso", "cannot be read")])
def test_a_missing_or_unreadable_iso_is_refused_here(salt, master, monkeypatch, tmp_path, capsys, path, why):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "locked.iso").write_bytes(b"CD001")
    monkeypatch.setattr(commands.os, "access", lambda p, mode: not p.endswith("locked.iso"))
    assert hostcmd.main(["cdrom", "vm1", path]) == 2
    assert why in capsys.readouterr().err and salt.calls == [] and master.probed == []


def test_swap_prints_what_each_host_did_and_the_new_home(salt, master, capsys):
    salt.result = {"name": "vm1", "home": "hostB", "resynced": False,
                   "changes": {"hostA": {"changes": ["drbdadm down vm1", "lvremove here/vm1"]},
                               "hostB": {"changes": ["lvcreate -n vm1 here -L 1024M"]}},
                   "comment": "VM vm1's home is hostB"}
    assert hostcmd.main(["swap", "vm1"]) == 0
    assert capsys.readouterr().out == ("  hostA: drbdadm down vm1\n  hostA: lvremove here/vm1\n"
                                       "  hostB: lvcreate -n vm1 here -L 1024M\nVM vm1's home is hostB\n")


def test_create_prints_what_each_host_did_and_how_to_reach_the_vm(salt, master, capsys):
    salt.result = CREATED
    assert hostcmd.main(["create", "vm1", "here", "1024", "10G"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "  hostA: lvcreate -n vm1 here -L 10240M",
        "VM vm1 is on hostA (its home) and its peer: IP 10.79.0.5, MAC 52:54:00:00:00:05, VNC display 3 "
        "(127.0.0.1:5903 on the host running it). It is stopped: `pairvm start vm1` on hostA."]


@pytest.mark.parametrize(("argv", "form"), [
    (["create", "vm1", "here", "1024", "10G", "--ip", "10.79.0.9"],
     "salt-run pairvm.create vm1 hostA 1024 10G ip=10.79.0.9"),
    (["create", "vm1", "there", "1024", "10G"], "salt-run pairvm.create vm1 hostB 1024 10G"),
    (["cdrom", "vm1", "eject"], "salt-run pairvm.cdrom vm1 eject=True"),
    (["chkconfig", "vm1"], "salt-run pairvm.verify"),
])
def test_a_master_that_cannot_be_reached_is_named_with_the_form_to_use_there(
        salt, master, capsys, argv, form):
    with open(layout.global_path(), "w") as fh:
        json.dump({"me": "hostA", "peer": "hostB"}, fh)
    master.down = True
    assert hostcmd.main(argv) == 1
    assert salt.calls == []  # salt-call would wait for the master without end
    assert capsys.readouterr().err == (
        "pairvm: the master cannot be reached (salt.example.net:4506: Connection refused); nothing was "
        f"done. On the master, run: {form}\n")


def test_every_master_of_a_multi_master_minion_is_tried(salt, master, capsys):
    salt.config = {"master": ["m1", "m2"], "master_port": 4606}
    master.down = True
    assert hostcmd.main(["chkconfig"]) == 1
    assert master.probed == [("m1", 4606), ("m2", 4606)]


@pytest.mark.parametrize(("start", "message"), [
    ({}, "the master refused pairvm.host_chkconfig to this host: its peer_run setting must allow it"),
    ("'pairvm.host_chkconfig' runner publish timed out",
     "'pairvm.host_chkconfig' runner publish timed out; on the master, see"),
    ({"error": "hostC is not a host of a pair: ...", "retcode": 1}, "hostC is not a host of a pair: ..."),
    ({"comment": "no job"}, "the master answered pairvm.host_chkconfig without a job"),
])
def test_what_the_master_refuses_exits_1_with_its_reason(salt, master, capsys, start, message):
    salt.start = start
    assert hostcmd.main(["chkconfig"]) == 1
    assert capsys.readouterr().err.startswith(f"pairvm: {message}")
    assert salt.polls == []


@pytest.mark.parametrize(("result", "message"), [
    ({"error": "VM vm1 already exists (pillar or registry)", "retcode": 1},
     "VM vm1 already exists (pillar or registry)"),
    ("Exception occurred in runner pairvm.create: Traceback ...",
     "Exception occurred in runner pairvm.create"),
])
def test_what_the_job_on_the_master_refuses_exits_1_with_its_reason(salt, master, capsys, result, message):
    salt.result = result
    assert hostcmd.main(["create", "vm1", "here", "1024", "10G"]) == 1
    assert capsys.readouterr() == ("", f"pairvm: {result if isinstance(result, str) else message}\n")


def test_chkconfig_prints_the_differences_and_exits_1_when_there_are_any(salt, master, capsys):
    salt.result = {"lines": ["ERROR EMACHINESDIFF vm1: /machines/vm1 differs"],
                   "summary": "1 error, 0 warnings", "findings": [{}], "retcode": 1, "ok": False}
    assert hostcmd.main(["chkconfig", "vm1"]) == 1
    assert capsys.readouterr().out == "ERROR EMACHINESDIFF vm1: /machines/vm1 differs\n1 error, 0 warnings\n"
    salt.result = {"lines": [], "summary": "0 errors, 0 warnings", "findings": [], "retcode": 0, "ok": True}
    assert hostcmd.main(["chkconfig", "vm1"]) == 0


def test_a_command_of_several_forms_shows_each_in_its_help(salt, capsys):
    assert hostcmd.main(["help", "create"]) == 0
    out = capsys.readouterr().out
    assert "usage: pairvm create NAME\n" in out
    assert "usage: pairvm create NAME here|there MEMORY DISC [--ip IP] [--vcpus N]\n" in out
    assert "salt-run pairvm.create NAME HOME MEMORY DISC [ip=IP] [vcpus=N]" in out
    assert hostcmd.main(["create", "vm1", "here"]) == 2
    assert capsys.readouterr().err.endswith(
        "usage: pairvm create NAME here|there MEMORY DISC [--ip IP] [--vcpus N]\n")


@pytest.mark.parametrize("argv", [["stop", "vm9"], ["serial", "vm9"], ["cdrom", "vm9"],
                                  ["destroy", "vm9", "--yes-really"], ["image", "vm9", "squeeze", "pw123"]])
def test_a_vm_this_host_has_no_record_of_is_named_and_nothing_else(salt, capsys, argv):
    """serial says it itself (before the banner), image too (before the password's warning or
    prompt); the others pass the function's message on."""
    salt.stdout, salt.stderr, salt.rc = "", f"Error running 'pairvm.{argv[0]}': no VM vm9 on this host\n", 1
    assert hostcmd.main(argv) == 1
    assert capsys.readouterr() == ("", "pairvm: no VM vm9 on this host\n")
    assert salt.execs == []
