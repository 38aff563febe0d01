"""The host command's table: each ``pairvm COMMAND`` and the function it calls.

One declarative entry per form of a command: the function, its positional
arguments (each a keyword argument of the function, checked by its kind),
its flags (each sets keyword arguments, or takes a value), how the result
is shown, what the command does on the host itself (``local``: prompting,
attaching a console), and where the function runs: on this host without the
master (``salt-call --local``), on this host with the master's pillar
(``master``), or on the master itself (``runner``: a runner function,
through Salt's peer runner interface, ``publish.runner``). A command may
have several forms (``create NAME`` from pillar, ``create NAME here|there
MEMORY DISC`` through the master); the number of positional values chooses
one (``choose``). ``parse`` turns an argv into keyword arguments; the help
text comes from the function's own docstring (``pairvmlib.hostcmd``), or
the entry's ``summary`` for a runner; the bash completion is rendered from
``completion_spec`` (the state ``pairvm.host.config``). Standard library
only: the host command runs it with the system's Python.
"""

import ipaddress
import os
import re
from dataclasses import dataclass, field

from pairvmlib import checks, names
from pairvmlib.errors import Invalid


class Usage(Exception):
    """Wrong arguments: say what is wrong, show the command's usage, exit 2."""


@dataclass(frozen=True)
class Arg:
    """A positional argument (or a flag's value): keyword ``key`` of the function, checked as ``kind``.

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
    """``--name``: sets keyword arguments ``sets``, or with ``value`` takes one (``--ip IP`` or
    ``--ip=IP``); ``missing`` is the refusal when it is required."""

    name: str
    sets: dict = field(default_factory=dict)
    missing: str = ""
    value: Arg = None

    @property
    def shown(self):
        return f"{self.name} {self.value.shown}" if self.value else self.name


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
    runner: bool = False  # a runner function of the master, run through publish.runner
    on_master: str = ""  # runner: the salt-run form to name when the master cannot be reached
    summary: str = ""  # for a command that is more than its function: what it does, in one sentence

    @property
    def synopsis(self):
        """``stop NAME [--graceful [SECONDS]]``: an argument that needs a flag is shown with it."""
        words = [self.name, *(arg.shown for arg in self.args if not arg.requires)]
        for flag in self.flags:
            needing = [arg.shown for arg in self.args if arg.requires == flag.name]
            shown = " ".join([flag.shown, *needing])
            words.append(shown if flag.missing else f"[{shown}]")
        return " ".join(words)

    @property
    def arity(self):
        """(fewest, most) positional values of this form."""
        return sum(1 for arg in self.args if not arg.optional), len(self.args)


NAME = Arg("name", "vm")
WHERE = Arg("where", "choice", label="here|there",
            words={"here": {"where": "here"}, "there": {"where": "there"}})
TABLE = (
    Command("help", "", (Arg("command", "command", optional=True),), local="help",
            summary="Show the commands, or one command's help."),
    Command("list", "pairvm.list", (Arg("fields", "fields", optional=True, label="FIELD,..."),), show="list"),
    Command("check_system", "pairvm.check_system", show="check"),
    Command("first_time_setup", "pairvm.check_system", show="setup", local="first_time_setup",
            summary="Say how to set this host up (a Salt state), then check it as check_system does."),
    Command("create", "pairvm.create", (NAME,), master=True),
    Command("create", "pairvm.host_create", (NAME, WHERE, Arg("memory", "mib", label="MEMORY"),
                                             Arg("disc", "size", label="DISC")),
            (Flag("--ip", value=Arg("ip", "ip")), Flag("--vcpus", value=Arg("vcpus", "vcpus", label="N"))),
            show="created", runner=True,
            on_master="salt-run pairvm.create {name} {home} {memory} {disc} {options}",
            summary="Create VM NAME on both hosts through the master, here or on the peer (there), "
                    "with MEMORY MiB and a DISC like 10G."),
    Command("destroy", "pairvm.destroy", (NAME,), (
        Flag("--yes-really", {"confirm": True, "missing_ok": False},
             "destroy deletes {name} from THIS host ({host}): its disc here with\n"
             "everything on it, its DRBD resource and its libvirt domain. It cannot be undone;\n"
             "the peer's copy is not touched. To go ahead: pairvm destroy {name} --yes-really"),
        Flag("--force", {"force": True}))),
    Command("start", "pairvm.start", (NAME,), (Flag("--away", {"away": True}),
                                               Flag("--disconnected", {"disconnected": True}))),
    Command("stop", "pairvm.stop", (NAME, Arg("timeout", "seconds", optional=True, label="SECONDS",
                                              requires="--graceful")),
            (Flag("--graceful", {"graceful": True}),)),
    Command("cdrom", "pairvm.cdrom", (NAME,), show="cdrom",
            summary="Show VM NAME's CD: the running VM's, or the one its next start attaches."),
    Command("cdrom", "pairvm.host_cdrom", (NAME, Arg("iso", "file", label="ISO|eject",
                                                     words={"eject": {"eject": True}})),
            show="pair", runner=True, on_master="salt-run pairvm.cdrom {name} {media}",
            summary="Put ISO (a file here, and at the same path on the peer) into VM NAME's CD, or "
                    "eject it, on both hosts: for its next start, and at once where it runs."),
    Command("image", "pairvm.image", (NAME, Arg("dist"), Arg("password", "password", optional=True,
                                                             label="PASSWORD|-")),
            (Flag("--hostname", value=Arg("hostname")), Flag("--firstboot", value=Arg("firstboot", "file",
                                                                                       label="SCRIPT"))),
            progress=True, master=True, local="image"),
    Command("serial", "pairvm.serial", (NAME, Arg("lines", "lines", optional=True, label="N",
                                                  requires="--log")),
            (Flag("--log"),), show="text", local="serial",
            summary="Attach to VM NAME's serial console (leave with Ctrl+]), or show the last N lines "
                    "of its log (--log)."),
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
    Command("chkconfig", "pairvm.host_chkconfig", (Arg("name", "vm", optional=True),), show="findings",
            runner=True, on_master="salt-run pairvm.verify",
            summary="Compare this host's view of VM NAME, or of every VM, with the peer's (the master's "
                    "pair verification); exit 1 when they differ."),
    Command("print_ssh_forwards", "pairvm.print_ssh_forwards", show="text"),
    Command("swaplive", "pairvm.migrate", (NAME,), (Flag("--away", {"away": True}),
                                                  Flag("--cleanup", {"cleanup": True})), progress=True),
    Command("swap", "pairvm.host_swap", (NAME,), show="pair", runner=True,
            on_master="salt-run pairvm.swap {name}",
            summary="Make the peer the home of the stopped VM NAME: each host copies its replica of the "
                    "disc into the other volume group, the master records the new home."),
    Command("metrics", "pairvm.metrics", show="text"),
    Command("graphite_stats", "pairvm.graphite_stats", (Arg("prefix", optional=True),), show="text"),
)
FORMS = {}
for _entry in TABLE:
    FORMS.setdefault(_entry.name, []).append(_entry)
FORMS = {name: tuple(forms) for name, forms in FORMS.items()}
COMMANDS = {name: forms[0] for name, forms in FORMS.items()}  # the first form of each command


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


def _file(value):
    """A file the operator names here: absolute (relative to where the operator is), readable."""
    path = os.path.abspath(value)
    if not os.path.isfile(path):
        raise Usage(f"{path} is not a file" if os.path.exists(path) else f"{path} does not exist")
    if not os.access(path, os.R_OK):
        raise Usage(f"{path} cannot be read")
    return path


def _ip(value):
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise Usage(f"IP must be an IPv4 address, got {value!r}") from None


def _size(value):
    try:
        checks.size_mib(value, checks.MIN_DISC_MIB)
    except Invalid as exc:
        raise Usage(f"DISC {exc} (e.g. 10G, 512M)") from None
    return value


KINDS = {
    "text": lambda arg, value: value,
    "vm": lambda arg, value: _vm(value),
    "vm_or_all": lambda arg, value: value if value == "all" else ",".join(_vm(v) for v in value.split(",")),
    "path": lambda arg, value: os.path.abspath(value),  # relative to where the operator is
    "file": lambda arg, value: _file(value),
    "seconds": lambda arg, value: _count(value, arg.label, 86400),
    "lines": lambda arg, value: _count(value, arg.label, 100000),
    "speed": lambda arg, value: _count(value, "SPEED (KiB/s, 0: no limit)", 2**31, low=0),
    "mib": lambda arg, value: _count(value, "MEMORY (MiB)", checks.MAX_MEMORY_MIB),
    "vcpus": lambda arg, value: _count(value, "N (virtual CPUs)", 64),
    "size": lambda arg, value: _size(value),
    "ip": lambda arg, value: _ip(value),
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


def _split(flags, args):
    """(positional values, {flag name: its value, or True}) of ``args``; a value starting with
    ``-`` is an option (``-`` alone is a value: read it from standard input)."""
    known = {flag.name: flag for flag in flags}
    values, given, words = [], {}, iter(args)
    for word in words:
        name, _, inline = word.partition("=")
        flag = known.get(word) or (known.get(name) if known.get(name) and known[name].value else None)
        if flag is None:
            if word.startswith("-") and word != "-":
                raise Usage(f"unknown option {word!r}")
            values.append(word)
        elif not flag.value:
            given[flag.name] = True
        elif word != flag.name:
            given[flag.name] = inline
        else:
            given[flag.name] = next(words, None)
            if given[flag.name] is None:
                raise Usage(f"{flag.name} needs a value: {flag.shown}")
    return values, given


def choose(name, args):
    """The form of command ``name`` that ``args`` call: the first that takes as many positional
    values (the last one, to say what is wrong, when none does)."""
    forms = FORMS[name]
    if len(forms) == 1:
        return forms[0]
    values, _ = _split([flag for form in forms for flag in form.flags], args)
    return next((form for form in forms if len(values) <= form.arity[1]), forms[-1])


def parse(command, args):
    """``(kwargs, flags given)`` of ``pairvm COMMAND ARGS``, or ``Usage`` saying what is wrong.

    Every value is checked by its kind first."""
    values, given = _split(command.flags, args)
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
            kwargs.update(_value(flag.value, given[flag.name]) if flag.value else flag.sets)
    return kwargs, given


def completion_spec():
    """What the bash completion needs: ``names`` (the commands, in the table's order),
    ``commands`` ``{name: {"vm": completes VM names first, "all": offers ``all`` too,
    "commands": completes command names, "flags": [...], "words": [...] second, "files":
    completes paths second}}`` (the forms of a command merged), and ``vm_name_re``, the VM
    name rule as a bash regular expression."""
    spec = {}
    for name, forms in FORMS.items():
        firsts = [form.args[0] for form in forms if form.args]
        seconds = [form.args[1] for form in forms if len(form.args) > 1]
        spec[name] = {
            "vm": any(arg.kind in ("vm", "vm_or_all") for arg in firsts) and name != "create",
            "all": any(arg.kind == "vm_or_all" for arg in firsts),
            "commands": any(arg.kind == "command" for arg in firsts),
            "flags": [flag.name for form in forms for flag in form.flags],
            "words": sorted({word for arg in seconds for word in arg.words}),
            "files": any(arg.kind in ("path", "file") for arg in seconds),
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
