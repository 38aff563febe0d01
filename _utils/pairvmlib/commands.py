"""The host command's table: each ``pairvm COMMAND`` and the function it calls.

One declarative entry per command: the execution function, its positional
arguments (each a keyword argument of the function, checked by its kind),
its flags (each sets keyword arguments), how the result is shown, and what
the command does on the host itself (``local``: prompting, attaching a
console). ``parse`` turns an argv into ``(function, kwargs)``; the help
text comes from the function's own docstring (``pairvmlib.hostcmd``); the
bash completion is rendered from ``completion_spec`` (the state
``pairvm.host.config``). Standard library only: the host command runs it
with the system's Python.
"""

import os
import re
from dataclasses import dataclass, field

from pairvmlib import names


class Usage(Exception):
    """Wrong arguments: say what is wrong, show the command's usage, exit 2."""


@dataclass(frozen=True)
class Arg:
    """A positional argument: keyword ``key`` of the function, checked as ``kind``.

    ``words`` maps special values to keyword arguments (``eject`` ->
    ``eject=True``); ``requires``/``excludes`` name a flag it needs or forbids.
    """

    key: str
    kind: str = "text"
    optional: bool = False
    label: str = ""
    words: dict = field(default_factory=dict)
    requires: str = ""
    excludes: str = ""

    @property
    def shown(self):
        text = self.label or self.key.upper()
        return f"[{text}]" if self.optional else text


@dataclass(frozen=True)
class Flag:
    """``--name``: sets keyword arguments ``sets``; ``missing`` is the refusal when it is required."""

    name: str
    sets: dict
    missing: str = ""


@dataclass(frozen=True)
class Command:
    name: str
    function: str
    args: tuple = ()
    flags: tuple = ()
    show: str = "changes"  # the formatter of pairvmlib.hostcmd
    progress: bool = False  # the function reports progress on stderr: show it while it runs
    local: str = ""  # what pairvmlib.hostcmd does on the host before (or instead of) the call
    master: bool = False  # needs the master's pillar: salt-call without --local
    summary: str = ""  # for a command that is more than its function: what it does, in one sentence

    @property
    def synopsis(self):
        """``stop NAME [--graceful [SECONDS]]``: an argument that needs a flag is shown with it."""
        words = [self.name, *(arg.shown for arg in self.args if not arg.requires)]
        for flag in self.flags:
            needing = [arg.shown for arg in self.args if arg.requires == flag.name]
            shown = " ".join([flag.name, *needing])
            words.append(shown if flag.missing else f"[{shown}]")
        return " ".join(words)


NAME = Arg("name", "vm")
TABLE = (
    Command("help", "", (Arg("command", "command", optional=True),), local="help",
            summary="Show the commands, or one command's help."),
    Command("list", "pairvm.list", (Arg("fields", "fields", optional=True, label="FIELD,..."),), show="list"),
    Command("check_system", "pairvm.check_system", show="check"),
    Command("first_time_setup", "pairvm.check_system", show="setup", local="first_time_setup",
            summary="Say how to set this host up (a Salt state), then check it as check_system does."),
    Command("create", "pairvm.create", (NAME,), master=True),
    Command("destroy", "pairvm.destroy", (NAME,), (
        Flag("--yes-really", {"confirm": True},
             "destroy deletes {name} from THIS host ({host}): its disc here with\n"
             "everything on it, its DRBD resource and its libvirt domain. It cannot be undone;\n"
             "the peer's copy is not touched. To go ahead: pairvm destroy {name} --yes-really"),
        Flag("--force", {"force": True}))),
    Command("start", "pairvm.start", (NAME,), (Flag("--away", {"away": True}),
                                               Flag("--disconnected", {"disconnected": True}))),
    Command("stop", "pairvm.stop", (NAME, Arg("timeout", "seconds", optional=True, label="SECONDS",
                                              requires="--graceful")),
            (Flag("--graceful", {"graceful": True}),)),
    Command("cdrom", "pairvm.cdrom", (NAME, Arg("iso", "path", optional=True, label="ISO|eject",
                                                words={"eject": {"eject": True}})), show="cdrom"),
    Command("image", "pairvm.image", (NAME, Arg("dist"), Arg("hostname"),
                                      Arg("password", "password", optional=True, label="PASSWORD|-"),
                                      Arg("firstboot", "path", optional=True)),
            progress=True, master=True, local="image"),
    Command("serial", "pairvm.serial", (NAME, Arg("lines", "lines", optional=True, label="N",
                                                  requires="--log")),
            (Flag("--log", {}),), show="text", local="serial"),
    Command("resize", "pairvm.resize", (NAME, Arg("size"))),
    Command("split_brain_victim", "pairvm.split_brain_victim",
            (NAME, Arg("snapshot_size", optional=True, excludes="--no-snapshot")),
            (Flag("--no-snapshot", {"snapshot": False}),)),
    Command("suppress", "pairvm.suppress", (NAME, Arg("on", "choice", optional=True, label="on|off",
                                                      words={"on": {"on": True}, "off": {"on": False}}),)),
    Command("autostart", "pairvm.autostart", show="autostart"),
    Command("monitor", "pairvm.monitor", (NAME, Arg("command", label="'HMP COMMAND'")), show="text"),
    Command("backup", "pairvm.backup", (Arg("name", "vm_or_all", label="NAME|all"),
                                        Arg("destination", label="USER@HOST:/PATH"),
                                        Arg("speed", "speed", optional=True)),
            (Flag("--zstd", {"compress": "zstd"}), Flag("--on-running-host", {"on_running_host": True})),
            show="backup", progress=True),
    Command("restore", "pairvm.restore", (NAME, Arg("source", label="USER@HOST:/PATH")), (
        Flag("--yes-really", {"confirm": True},
             "restore overwrites the whole disc of {name} on both hosts with the backup.\n"
             "It cannot be undone. To go ahead: pairvm restore {name} {source} --yes-really"),),
            progress=True),
    Command("verify_backup", "pairvm.verify_backup", (Arg("source", label="USER@HOST:/PATH"),
                                                      Arg("name", "vm", optional=True)),
            show="verify", progress=True),
    Command("print_ssh_forwards", "pairvm.print_ssh_forwards", show="text"),
    Command("metrics", "pairvm.metrics", show="text"),
    Command("graphite_stats", "pairvm.graphite_stats", (Arg("prefix", optional=True),), show="text"),
)
COMMANDS = {command.name: command for command in TABLE}
# Commands of the old tool that a later version provides: (what it did, what to use instead).
LATER = {
    "swap": ("move a stopped VM to the peer", None),
    "swaplive": ("live-migrate a running VM to the peer", None),
    "chkconfig": ("compare the VM configuration across the pair", "`salt-run pairvm.verify` on the master"),
}


# --- checking one value by its kind ----------------------------------------------------------


def _count(value, what, high, low=1):
    if not (value.isdigit() and value.isascii() and low <= int(value) <= high):
        raise Usage(f"{what} must be a whole number from {low} to {high}, got {value!r}")
    return int(value)


def _vm(value):
    problem = names.vm_name_problem(value)
    if problem:
        raise Usage(f"invalid VM name {value!r}: {problem.split(', got ')[0]}")
    return value


KINDS = {
    "text": lambda arg, value: value,
    "vm": lambda arg, value: _vm(value),
    "vm_or_all": lambda arg, value: value if value == "all" else ",".join(_vm(v) for v in value.split(",")),
    "path": lambda arg, value: os.path.abspath(value),  # relative to where the operator is
    "seconds": lambda arg, value: _count(value, arg.label, 86400),
    "lines": lambda arg, value: _count(value, arg.label, 100000),
    "speed": lambda arg, value: _count(value, "SPEED (KiB/s, 0: no limit)", 2**31, low=0),
    "fields": lambda arg, value: value,
    "password": lambda arg, value: value,  # hashed by the host command before the call
    "command": lambda arg, value: value,
    "choice": lambda arg, value: value,
}


def _value(arg, value):
    if value in arg.words:
        return dict(arg.words[value])
    if arg.kind == "choice":
        raise Usage(f"expected {' or '.join(arg.words)}, got {value!r}")
    return {arg.key: KINDS[arg.kind](arg, value)}


# --- parsing an argv -----------------------------------------------------------------------


def parse(command, args):
    """``(kwargs, flags given)`` of ``pairvm COMMAND ARGS``, or ``Usage`` saying what is wrong.

    Every value is checked by its kind first; a value starting with ``-``
    is an option (``-`` alone is a value: read it from standard input)."""
    known = {flag.name: flag for flag in command.flags}
    unknown = [a for a in args if a.startswith("-") and a != "-" and a not in known]
    if unknown:
        raise Usage(f"unknown option {unknown[0]!r}")
    given = {a for a in args if a in known}
    values = [a for a in args if a not in known]
    required = [arg for arg in command.args if not arg.optional]
    if len(values) < len(required):
        raise Usage(f"missing {required[len(values)].shown}")
    if len(values) > len(command.args):
        raise Usage(f"unexpected argument {values[len(command.args)]!r}")
    kwargs = {}
    for arg, value in zip(command.args, values):  # noqa: B905 - fewer values than args is normal
        if arg.requires and arg.requires not in given:
            raise Usage(f"{arg.shown.strip('[]')} ({value!r}) goes with {arg.requires}")
        if arg.excludes and arg.excludes in given:
            raise Usage(f"{arg.shown.strip('[]')} and {arg.excludes} exclude each other")
        kwargs.update(_value(arg, value))
    for flag in command.flags:
        if flag.missing and flag.name not in given:
            raise Usage(flag.missing.format(host=os.uname().nodename, **kwargs))
        if flag.name in given:
            kwargs.update(flag.sets)
    return kwargs, given


def completion_spec():
    """What the bash completion needs: ``names`` (the commands, in the table's order),
    ``commands`` ``{name: {"vm": completes VM names first, "all": offers ``all`` too,
    "commands": completes command names, "flags": [...], "words": [...], "files": completes
    paths}}``, and ``vm_name_re``, the VM name rule as a bash regular expression."""
    spec = {}
    for command in TABLE:
        first = command.args[0] if command.args else None
        second = command.args[1] if len(command.args) > 1 else None
        spec[command.name] = {
            "vm": bool(first and first.kind in ("vm", "vm_or_all")) and command.name != "create",
            "all": bool(first and first.kind == "vm_or_all"),
            "commands": bool(first and first.kind == "command"),
            "flags": [flag.name for flag in command.flags],
            "words": sorted(second.words) if second else [],
            "files": bool(second and second.kind == "path"),
        }
    return {"names": list(spec), "commands": spec, "vm_name_re": f"^{names.VM_NAME_RE.pattern}$"}


def plain(text):
    """Docstring text for a terminal: reStructuredText's ``literals`` without their quotes."""
    return re.sub(r"``([^`]+)``", r"\1", text or "")


def summary(doc):
    """The first sentence of a docstring's first paragraph, on one line (``e.g.`` does not end one)."""
    text = " ".join(plain(doc).strip().split("\n\n")[0].split())
    match = re.match(r"(.+?[.!?])(\s+(?=[A-Z])|$)", text)
    return match.group(1) if match else text
