"""Jobs a pair host starts on the master: the operator's runner, in a process of its own.

A master worker runs a peer runner (``publish.runner``) to its end before it
takes its next request, and Salt 3008's worker-pool router cannot read a
minion's request (it is encrypted with the minion's session key), so it
cannot route the hosts' requests around that worker: a runner that waits for
the hosts (their job returns, their pillar) waits for requests that may be
queued behind itself. Measured in the lab: a ``pairvm.create`` run as a peer
runner stalled for minutes, and each of its calls to a host could take up to
its whole timeout. So a ``pairvm.host_*`` runner only checks the request,
starts the operator's runner (``salt-run FUNCTION key=value ...``) detached
(``start``) and returns a job token at once; the host command asks for the
result with ``pairvm.host_job`` (``result``), each ask a short request.

A job is ``<cachedir>/pairvm/peer-jobs/<token>/`` (root only): ``caller``
(the minion that started it) and, once ``salt-run`` ended, ``result.json``
(its return, written to a temporary name and renamed). Only the caller reads
its job; a result read is removed, and so are jobs older than a day.
"""

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time

from pairvmlib.errors import Failed

MAX_AGE = 86400
_TOKEN_RE = re.compile(r"[0-9a-f]{32}")
# Runs in the new process: detach (so the master never has a child to reap), run salt-run,
# keep its return (or why it failed) as result.json.
_WRAPPER = """
import json, os, subprocess, sys
if os.fork():
    os._exit(0)
os.setsid()
job, argv = sys.argv[1], sys.argv[2:]
proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
try:
    result = json.loads(proc.stdout)
except ValueError:
    said = (proc.stderr or proc.stdout).strip()[-2000:]
    result = {"error": f"salt-run failed (rc {proc.returncode}): {said}", "retcode": 1}
part = os.path.join(job, "result.json.part")
with open(part, "w", encoding="utf-8") as fh:
    json.dump(result, fh)
os.rename(part, os.path.join(job, "result.json"))
"""


def jobs_dir(opts):
    return os.path.join(opts["cachedir"], "pairvm", "peer-jobs")


def salt_run_argv(opts, function, kwargs):
    """``salt-run FUNCTION key=value ...`` against this master, string values not YAML-parsed,
    with the Python that runs the master."""
    strings = [key for key, value in kwargs.items() if isinstance(value, str)]
    return [sys.executable, "-c", "import salt.scripts; salt.scripts.salt_run()",
            f"--config-dir={os.path.dirname(opts['conf_file'])}", "--out=json", "--log-level=quiet",
            *([f"--no-parse={','.join(strings)}"] if strings else []),
            function, *(f"{key}={value}" for key, value in kwargs.items())]


def start(opts, caller, argv):
    """Start ``argv`` (``salt_run_argv``) as ``caller``'s job; return its token."""
    root = jobs_dir(opts)
    os.makedirs(root, mode=0o700, exist_ok=True)
    _sweep(root)
    token = secrets.token_hex(16)
    job = os.path.join(root, token)
    os.mkdir(job, 0o700)
    with open(os.path.join(job, "caller"), "w", encoding="utf-8") as fh:
        fh.write(caller)
    try:
        subprocess.run([sys.executable, "-c", _WRAPPER, job, *argv], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True, check=True,
                       timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        shutil.rmtree(job, ignore_errors=True)
        raise Failed(f"could not start salt-run on the master: {exc}") from exc
    return token


def result(opts, caller, token):
    """``{"done": False}`` while ``caller``'s job ``token`` runs; ``{"done": True, "result": ...}``
    once it ended (the job is removed then)."""
    if not isinstance(token, str) or not _TOKEN_RE.fullmatch(token):
        raise Failed(f"no job {token!r}: a job is 32 hexadecimal digits")
    job = os.path.join(jobs_dir(opts), token)
    try:
        with open(os.path.join(job, "caller"), encoding="utf-8") as fh:
            owner = fh.read()
    except OSError:
        raise Failed(f"no job {token} on the master (its result was read, or it is older than a day)") \
            from None
    if owner != caller:
        raise Failed(f"job {token} was not started by {caller}")
    try:
        with open(os.path.join(job, "result.json"), encoding="utf-8") as fh:
            done = json.load(fh)
    except FileNotFoundError:
        return {"done": False}
    shutil.rmtree(job, ignore_errors=True)
    return {"done": True, "result": done}


def _sweep(root):
    """Remove the jobs older than MAX_AGE (results nobody read, jobs that never ended)."""
    limit = time.time() - MAX_AGE
    for token in os.listdir(root):
        path = os.path.join(root, token)
        try:
            if os.stat(path).st_mtime < limit:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass
