"""The host command ``pairvm``: the old tool's commands on a host, through Salt.

``pairvm COMMAND [ARG...]`` runs the function the command's entry in
``pairvmlib.commands`` names: an execution function through ``salt-call
--local`` (so it works while the master is down; ``create NAME`` and
``image`` need the master's pillar), or a runner function of the master
through Salt's peer runner interface (``salt-call publish.runner``:
``create NAME here|there ...``, ``cdrom NAME ISO|eject``, ``chkconfig``;
the runner starts a job on the master, whose result the command asks for
with ``pairvm.host_job`` until it is there), and prints its result for a
person. ``pairvm help`` lists the commands,
``pairvm help COMMAND`` shows one with its function's docstring.

The command itself (``salt/pairvm/files/pairvm``, installed by the state
``pairvm.config``) only puts the minion's synced ``_utils`` on ``sys.path``
and calls ``main``. Standard library only: it runs with the system's Python.

Exit status: 0 done, 1 the operation failed or refused (its message says
why; also the master not reachable, or differences found by ``chkconfig``),
2 wrong usage (nothing was run).

Safety: salt-call gets an argv list, never a shell string. Every argument is
``key=value`` with the key chosen by the table; values are checked first (VM
names against the naming rule, no leading ``-``, no control characters),
string values are listed in ``--no-parse`` so Salt passes them verbatim, and
``--`` ends salt-call's own options before the function name.
"""

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

from pairvmlib import layout, machines, progress
from pairvmlib.commands import COMMANDS, FORMS, Usage, choose, parse, plain, summary
from pairvmlib.errors import PairvmError

CONSOLE_BANNER = "Connected to {name}'s serial console; press Ctrl+] to leave."
SETUP_INTRO = (
    "Host setup is a Salt state. On the master, run:\n\n"
    "    salt {minion} state.apply pairvm.host\n\n"
    "It installs and configures what a pairvm host needs, and can be re-run at any time.\n"
    "Checking this host against {view}, which that state writes:\n"
)


class Failed(Exception):
    """The function failed or refused: print its message, exit 1."""


# --- the password of ``image`` ----------------------------------------------------------------


PLAINTEXT_WARNING = (
    "pairvm: warning: a password typed on the command line is visible to every user in the "
    "process list (ps) while pairvm runs, and stays in your shell history; leave it out to be "
    "prompted, or give - and send it on stdin"
)


def sha512_crypt(password):
    """The SHA-512 crypt hash ($6$...) of ``password``: Python's crypt, else ``openssl passwd -6``."""
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt  # removed in Python 3.13
        return crypt.crypt(password, crypt.mksalt(crypt.METHOD_SHA512))
    except ImportError:
        pass
    try:  # the password goes on stdin, never into an argv
        proc = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=password + "\n",
                              capture_output=True, text=True, check=False)
    except OSError as exc:
        raise Failed(f"cannot hash the password: no crypt module and no openssl ({exc.strerror})") from exc
    if proc.returncode != 0 or not proc.stdout.startswith("$6$"):
        raise Failed(f"openssl passwd -6 failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def read_password(given, stdin=None):
    """The password hash for ``image``: ``given`` as it is if already a $6$ hash; else
    the plaintext given (with a warning), typed at a prompt, or read from stdin."""
    stdin = stdin or sys.stdin
    if given is not None and given.startswith("$6$"):
        return given
    if given is not None and given != "-":
        print(PLAINTEXT_WARNING, file=sys.stderr)
        password = given
    elif stdin.isatty():
        import getpass

        password = getpass.getpass("root password for the guest: ")
        if getpass.getpass("again: ") != password:
            raise Usage("the two passwords differ")
    else:
        password = stdin.readline().rstrip("\r\n")
    if not password:
        raise Usage("empty password")
    return sha512_crypt(password)



# --- formatters: result -> text --------------------------------------------------------------

COLUMNS = (
    ("name", "NAME"), ("memory", "MEM"), ("disc", "DISC"), ("running", "RUN"),
    ("location", "WHERE"), ("vnc_display", "VNC"), ("drbd_connection", "DRBD"),
    ("drbd_disk", "DISK"), ("mac", "MAC"), ("ip", "IP"),
)


def _cell(value):
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def format_list(result):
    """The old tool's table: one VM a line, aligned columns, then RAM totals."""
    rows = result["vms"]
    keys = [k for k, _ in COLUMNS if not rows or k in rows[0]]
    titles = dict(COLUMNS)
    table = [[titles[k] for k in keys]] + [[_cell(r[k]) for k in keys] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(keys))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in table]
    if not rows:
        lines.append("(no VMs on this host)")
    mem = result["memory"]
    cap = mem.get("cap") or "none"
    lines.append(
        f"RAM here: {mem['here']} MiB  there: {mem['there']} MiB  "
        f"running here: {mem['running']} MiB  cap: {cap}"
    )
    return "\n".join(lines)


def format_setup(result):
    """first_time_setup: the checks, then what to do."""
    failed = sum(1 for check in result["checks"].values() if not check["ok"])
    if failed:
        ending = (f"{failed} check{'s' if failed > 1 else ''} failed: this host is NOT ready for pairvm. "
                  "Fix what failed, then run `pairvm first_time_setup` again.")
    else:
        ending = "all checks passed: this host is ready for pairvm."
    return format_check(result).rsplit("\n", 1)[0] + "\n\n" + ending


def format_check(result):
    lines = [
        f"{'ok  ' if c['ok'] else 'FAIL'}  {name:<14} {c['detail']}"
        for name, c in result["checks"].items()
    ]
    lines.append("host is ready for pairvm" if result["ok"] else "host is NOT ready for pairvm")
    return "\n".join(lines)


def format_changes(result):
    """What a mutating function did, one indented line each, then its comment."""
    comment = result.get("comment") or ""
    if not result["changes"]:
        name = result.get("name") or "pairvm"
        return f"{name}: nothing to do ({comment})" if comment else f"{name}: nothing to do"
    return "\n".join([f"  {change}" for change in result["changes"]] + ([comment] if comment else []))


def format_autostart(result):
    """Autostart acts on every VM: ``{vm: {"changes", "comment"}}``, one block each."""
    if "changes" in result:  # one result for the host, like the other commands
        return format_changes(result)
    lines = []
    for vm, each in result.items():
        comment = each.get("comment") or ""
        lines.append(f"{vm}: {comment or 'done'}" if each["changes"] else f"{vm}: nothing to do ({comment})")
        lines += [f"  {change}" for change in each["changes"]]
    return "\n".join(lines) or "autostart: no VMs on this host"


def format_cdrom(result):
    lines = [f"  {change}" for change in result.get("changes") or []]
    cdrom = f"cdrom {result['cdrom']}" if result["cdrom"] else "no cdrom"
    when = "" if result.get("running", True) else " (at its next start)"
    lines.append(f"{result['name']}: {cdrom}{when}")
    return "\n".join(lines)


def _per_host(changes):
    """``  host: change`` lines of a runner's ``{host: [change, ...] or a host's result}``."""
    lines = []
    for host, done in sorted(changes.items()):
        done = done.get("changes", []) if isinstance(done, dict) else done
        lines += [f"  {host}: {change}" for change in done]
    return lines


def format_pair(result):
    """What a runner did on both hosts, then its comment."""
    return "\n".join(_per_host(result.get("changes") or {}) + [result.get("comment") or "done"])


def format_created(result):
    """create through the master: what each host did, then how to reach the new VM."""
    vnc = result["vnc_display"]
    return "\n".join(_per_host(result.get("changes") or {}) + [
        *([result["comment"]] if result.get("comment") else []),
        f"VM {result['name']} is on {result['home']} (its home) and its peer: IP {result['ip']}, "
        f"MAC {result['mac']}, VNC display {vnc} (127.0.0.1:{5900 + vnc} on the host running it). "
        f"It is stopped: `pairvm start {result['name']}` on {result['home']}.",
    ])


def format_findings(result):
    """chkconfig: the pair verification's findings, one a line, then the count."""
    return "\n".join([*result["lines"], result["summary"]])


def format_backup(result):
    """One VM: its changes and figures; all: one line per VM."""
    if "vms" not in result:
        out = format_changes(result)
        if "sha256" in result:
            out += (f"\n{result['bytes']} bytes read, {result['sent']} sent in {result['seconds']} s, "
                    f"sha256 {result['sha256']}")
        return out
    lines = []
    for vm, report in sorted(result["vms"].items()):
        state = {True: "ok", False: "FAILED", None: "skipped"}[report["result"]]
        detail = report.get("destination") or report.get("comment", "")
        lines.append(f"{vm:<12}  {state:<7}  {detail}")
    return "\n".join([*lines, result["comment"]])


def format_verify(result):
    return result["comment"]


def format_text(result):
    return str(result).rstrip("\n")



# --- running salt-call ------------------------------------------------------------------------


def _check_values(kwargs):
    for key, value in kwargs.items():
        if isinstance(value, str) and (value.startswith("-") or re.search(r"[\x00-\x1f\x7f]", value)):
            raise Usage(f"refusing {key} value {value!r} (leading '-' or a control character)")


def salt_argv(function, kwargs, local=True, config_dir="/etc/salt", no_parse=None):
    """The salt-call argv: every argument ``key=value``, string values (or the keys
    ``no_parse``) not YAML-parsed."""
    _check_values(kwargs)
    strings = no_parse if no_parse is not None else [k for k, v in kwargs.items() if isinstance(v, str)]
    return [
        "salt-call", *(["--local"] if local else []), f"--config-dir={config_dir}", "--out=json",
        "--retcode-passthrough", "--log-level=quiet",
        *([f"--no-parse={','.join(strings)}"] if strings else []),
        "--", function, *(f"{k}={v}" for k, v in kwargs.items()),
    ]


def error_message(function, stderr):
    """The function's own message out of what salt-call printed when it failed."""
    text = stderr.strip()
    prefix = f"Error running '{function}': "
    if prefix in text:
        return text.split(prefix, 1)[1].strip()
    if "Passed invalid arguments: " in text:  # salt adds a full stop, then the docstring
        return text.split("Passed invalid arguments: ", 1)[1].split("\n\nUsage:")[0].strip()[:-1]
    last = text.splitlines()[-1] if text else f"{function} failed and said nothing"
    if "Traceback (most recent call last)" in text:
        return f"{function} crashed: {last}"
    if last.endswith("is not available."):  # warnings may come before it
        return f"{last} Are the formula's modules synced (salt HOST saltutil.sync_all)?"
    return text or last


def show_progress(stream, out=sys.stderr):
    """Copy progress lines from the function's stderr to the terminal; return the rest."""
    rest = []
    for text in stream:
        if text.startswith(progress.PREFIX):
            line = text[len(progress.PREFIX):].rstrip("\n")
            out.write(f"\r\033[K{line}" if out.isatty() else f"{line}\n")
            out.flush()
        else:
            rest.append(text)
    if out.isatty():
        out.write("\n")
    return "".join(rest)


def run_showing_progress(argv):
    """subprocess.run(argv) that shows the progress lines the function writes on stderr."""
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        stdout = []
        reader = threading.Thread(target=lambda: stdout.append(proc.stdout.read()))
        reader.start()
        stderr = show_progress(proc.stderr)
        reader.join()
        return subprocess.CompletedProcess(argv, proc.wait(), "".join(stdout), stderr)


def salt_call(function, kwargs, config_dir, progress=False, local=True):
    """Run one execution function (``local``: without the master); return (retcode, result)
    or raise Failed."""
    argv = salt_argv(function, kwargs, local, config_dir)
    try:
        if progress:
            proc = run_showing_progress(argv)
        else:
            proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise Failed(f"cannot run salt-call: {exc.strerror}") from exc
    try:
        result = json.loads(proc.stdout)["local"]
    except (ValueError, KeyError, TypeError):
        raise Failed(error_message(function, proc.stderr)) from None
    if proc.returncode and isinstance(result, str):
        raise Failed(result)
    return proc.returncode, result


# --- a runner of the master, through the peer runner interface -------------------------------

RUNNER_TIMEOUT = 900  # seconds a job on the master may take (a create waits for DRBD on both hosts)
POLL_INTERVAL = 1  # seconds between the asks for a job's result (each a salt-call of its own)
MASTER_PROBE_TIMEOUT = 5


def runner_argv(function, kwargs, config_dir="/etc/salt"):
    """``salt-call publish.runner FUNCTION`` with every argument ``key=value`` in ``arg``; the
    string values are listed in ``--no-parse``, which publish.runner hands on to the master."""
    _check_values(kwargs)
    strings = [k for k, v in kwargs.items() if isinstance(v, str)]
    arg = json.dumps([f"{k}={v}" for k, v in kwargs.items()])
    return salt_argv("publish.runner", {"fun": function, "arg": arg}, local=False, config_dir=config_dir,
                     no_parse=["fun", "arg", *strings])


def master_form(command, kwargs=None):
    """The salt-run form on the master of a runner command: with the values of ``kwargs``, or
    the placeholders (for help) without."""
    options = [flag.value for flag in command.flags if flag.value]
    if kwargs is None:
        fields = {"home": "HOME", "media": "iso=ISO|eject=True",
                  "options": " ".join(f"[{arg.key}={arg.shown}]" for arg in options)}
        fields.update({arg.key: arg.shown for arg in command.args})
    else:
        view = _view()
        fields = {**kwargs, "home": view.get("me" if kwargs.get("where") == "here" else "peer") or "HOST",
                  "media": f"iso={kwargs['iso']}" if kwargs.get("iso") else "eject=True",
                  "options": " ".join(f"{arg.key}={kwargs[arg.key]}" for arg in options if arg.key in kwargs)}
    return re.sub(r"{(\w+)}", lambda m: str(fields.get(m.group(1), "")), command.on_master).strip()


def _masters(config_dir):
    """[(address, port)] of the master(s) in this minion's configuration."""
    rc, opts = salt_call("config.items", {}, config_dir)
    masters = opts.get("master") if rc == 0 and isinstance(opts, dict) else None
    port = opts.get("master_port", 4506) if isinstance(opts, dict) else 4506
    return [(master, port) for master in ([masters] if isinstance(masters, str) else masters or [])]


def reach_master(command, kwargs, config_dir):
    """Raise Failed, naming the salt-run form to use on the master, when no master of this
    minion answers on its port (salt-call would wait for it without end)."""
    tried = []
    for address, port in _masters(config_dir):
        try:
            socket.create_connection((address, int(port)), timeout=MASTER_PROBE_TIMEOUT).close()
            return
        except OSError as exc:
            tried.append(f"{address}:{port}: {exc.strerror or exc}")
    raise Failed(f"the master cannot be reached ({'; '.join(tried) or 'no master configured'}); "
                 f"nothing was done. On the master, run: {master_form(command, kwargs)}")


def publish_runner(function, kwargs, config_dir):
    """One ``publish.runner`` call: the runner's return, or Failed saying why there is none."""
    argv = runner_argv(function, kwargs, config_dir)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=RUNNER_TIMEOUT)
    except OSError as exc:
        raise Failed(f"cannot run salt-call: {exc.strerror}") from exc
    except subprocess.TimeoutExpired:
        raise Failed(f"the master did not answer {function} within {RUNNER_TIMEOUT} s") from None
    try:
        result = json.loads(proc.stdout)["local"]
    except (ValueError, KeyError, TypeError):
        raise Failed(error_message("publish.runner", proc.stderr)) from None
    if not result:  # what the master answers a minion or function its peer_run does not allow
        raise Failed(f"the master refused {function} to this host: its peer_run setting must "
                     f"allow it (salt-run pairvm.peer_acl write=True, then restart the master)")
    if isinstance(result, str):  # e.g. "'pairvm.host_job' runner publish timed out"
        raise Failed(f"{result}; on the master, see `salt-run jobs.active`")
    if isinstance(result, dict) and "error" in result:
        raise Failed(result["error"])
    return result


def runner_call(command, kwargs, config_dir):
    """Run the command's runner on the master: it starts a job there (a peer runner must not
    wait for the hosts itself: pairvmlib.peerjobs), whose result is asked for until it is
    there. Returns (retcode, result) or raises Failed."""
    reach_master(command, kwargs, config_dir)
    started = publish_runner(command.function, kwargs, config_dir)
    token = started.get("job") if isinstance(started, dict) else None
    if not isinstance(token, str):
        raise Failed(f"the master answered {command.function} without a job: {started!r}")
    deadline = time.monotonic() + RUNNER_TIMEOUT
    while True:
        time.sleep(POLL_INTERVAL)
        answer = publish_runner("pairvm.host_job", {"token": token}, config_dir)
        if answer.get("done"):
            result = answer["result"]
            break
        if time.monotonic() > deadline:
            raise Failed(f"job {token} on the master did not end within {RUNNER_TIMEOUT} s; see "
                         f"`salt-run jobs.active` there")
    if isinstance(result, str):  # salt-run's own message, e.g. an exception in the runner
        raise Failed(result)
    if isinstance(result, dict) and "error" in result:
        raise Failed(result["error"])
    return (1 if isinstance(result, dict) and result.get("retcode") else 0), result


# --- help ---------------------------------------------------------------------------------------


def docstrings(config_dir):
    """{function: docstring} of every ``pairvm.*`` function (one ``sys.doc``), or {} when
    Salt cannot say (modules not synced)."""
    try:
        rc, docs = salt_call("sys.doc", {"name": "pairvm"}, config_dir)
    except (Failed, Usage):
        return {}
    return docs if rc == 0 and isinstance(docs, dict) else {}


def description(doc):
    """A docstring without its ``CLI Example`` block, dedented."""
    text = (doc or "").split("CLI Example:")[0]
    lines = text.strip("\n").splitlines()
    indent = min((len(line) - len(line.lstrip()) for line in lines[1:] if line.strip()), default=0)
    text = "\n".join([lines[0].strip()] + [line[indent:] for line in lines[1:]]).strip() if lines else ""
    return plain(text)


def _form_help(entry, docs):
    lines = [f"usage: pairvm {entry.synopsis}"]
    lines += [f"  {flag.name:<18} {', '.join(f'{k}={v}' for k, v in flag.sets.items())}"
              for flag in entry.flags if flag.sets]
    if not entry.function:
        return [*lines, "", entry.summary]
    if entry.runner:
        return [*lines, "", entry.summary, "",
                f"(Runs the runner {entry.function} on the master, through Salt's peer runner interface "
                f"(publish.runner); on the master, `{master_form(entry)}` does the same.)"]
    doc = docs.get(entry.function)
    lines += ["", description(doc)] if doc else []
    where = "through the master" if entry.master else "on this host, without the master"
    return [*lines, "", f"(Runs {entry.function} {where}; `salt HOST {entry.function}` does the same "
                        f"from the master.)"]


def usage(command=None, docs=None):
    docs = docs or {}
    if command in FORMS:
        return "\n\n".join("\n".join(_form_help(entry, docs)) for entry in FORMS[command])
    lines = ["usage: pairvm COMMAND [ARG...]", ""]
    for forms in FORMS.values():
        for entry in forms:
            text = entry.summary or summary(docs.get(entry.function))
            lines += [f"  {entry.synopsis}", *([f"      {text}"] if text else [])]
    lines += ["", "`pairvm help COMMAND` explains one command."]
    return "\n".join(lines)


def unknown(command):
    return f"unknown command {command!r}; `pairvm help` lists them"


# --- what some commands do on the host itself -------------------------------------------------


def local_help(kwargs, config_dir, given):
    command = kwargs.get("command")
    if command and command not in COMMANDS:
        raise Usage(unknown(command))
    print(usage(command, docstrings(config_dir)))
    return 0


def local_first_time_setup(kwargs, config_dir, given):
    view = _view()
    minion = _minion_id(config_dir) or view.get("me") or "HOST"
    print(SETUP_INTRO.format(minion=minion, view=layout.global_path()))
    return None


def local_serial(kwargs, config_dir, given):
    if "--log" in given:
        return None
    name = kwargs["name"]
    if machines.record_bytes(name) is None:
        raise Failed(machines.no_vm(name))
    uri = _view().get("libvirt_uri", "qemu:///system")
    print(CONSOLE_BANNER.format(name=name), flush=True)
    try:
        os.execvp("virsh", ["virsh", "-c", uri, "console", name])
    except OSError as exc:
        raise Failed(f"cannot run virsh: {exc.strerror}") from exc


def local_image(kwargs, config_dir, given):
    if machines.record_bytes(kwargs["name"]) is None:  # before a prompt or the password warning
        raise Failed(machines.no_vm(kwargs["name"]))
    kwargs["password"] = read_password(kwargs.get("password"))
    return None


def _view():
    try:
        return machines.read_global()
    except PairvmError:
        return {}


def _minion_id(config_dir):
    try:
        with open(os.path.join(config_dir, "minion_id"), encoding="utf-8") as fh:
            return fh.read().strip()
    except OSError:
        return ""


LOCAL = {"help": local_help, "first_time_setup": local_first_time_setup, "image": local_image,
         "serial": local_serial}
SHOW = {"changes": format_changes, "list": format_list, "check": format_check, "setup": format_setup,
        "cdrom": format_cdrom, "autostart": format_autostart, "backup": format_backup,
        "verify": format_verify, "text": format_text, "pair": format_pair, "created": format_created,
        "findings": format_findings}


def prepare(command, args, config_dir):
    """The keyword arguments of ``pairvm COMMAND ARGS`` for its function, after what the
    command does on the host itself (prompting, ...); an exit code when that was all."""
    kwargs, given = parse(command, args)
    if command.local:
        done = LOCAL[command.local](kwargs, config_dir, given)
        if done is not None:
            return done
    return kwargs


def main(argv, salt_config_dir="/etc/salt"):
    if not argv:
        print(usage(), file=sys.stderr)
        return 2
    name, args = argv[0], argv[1:]
    if name in ("-h", "--help"):
        name = "help"
    if name not in COMMANDS:
        print(f"pairvm: {unknown(name)}\n\n{usage()}", file=sys.stderr)
        return 2
    if "-h" in args or "--help" in args:
        print(usage(name, docstrings(salt_config_dir)))
        return 0
    command = FORMS[name][-1]
    try:
        command = choose(name, args)
        kwargs = prepare(command, args, salt_config_dir)
        if isinstance(kwargs, int):
            return kwargs
        if command.runner:
            rc, result = runner_call(command, kwargs, salt_config_dir)
        else:
            rc, result = salt_call(command.function, kwargs, salt_config_dir, progress=command.progress,
                                   local=not command.master)
    except Usage as exc:
        print(f"pairvm: {exc}\nusage: pairvm {command.synopsis}", file=sys.stderr)
        return 2
    except Failed as exc:
        print(f"pairvm: {exc}", file=sys.stderr)
        return 1
    try:
        out = SHOW[command.show](result)
    except (KeyError, TypeError, AttributeError):  # not the shape we know: show it raw
        out = json.dumps(result, indent=2)
    if out:
        print(out)
    return 0 if rc == 0 else 1
