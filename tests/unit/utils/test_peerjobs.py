"""pairvmlib.peerjobs: a job a pair host starts on the master runs detached, its result is kept
for its caller only. Real processes: the job's argv here is a small Python program, not salt-run."""

import json
import os
import sys
import time

import pytest

from pairvmlib import peerjobs
from pairvmlib.errors import Failed


@pytest.fixture
def opts(tmp_path):
    return {"cachedir": str(tmp_path / "cache"), "conf_file": str(tmp_path / "etc" / "master")}


def program(code):
    return [sys.executable, "-c", code]


def wait_result(opts, caller, token, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = peerjobs.result(opts, caller, token)
        if answer["done"]:
            return answer["result"]
        time.sleep(0.05)
    raise AssertionError("the job did not end")


def test_a_job_runs_detached_and_its_result_is_read_once_by_its_caller(opts, tmp_path):
    gate = tmp_path / "gate"
    code = ("import json, os, time\n"
            f"while not os.path.exists({str(gate)!r}): time.sleep(0.02)\n"
            "print(json.dumps({'name': 'vm1', 'ip': '10.79.0.5', 'pgid': os.getpgid(0)}))")
    started = time.monotonic()
    token = peerjobs.start(opts, "hostA", program(code))
    assert time.monotonic() - started < 5  # the caller does not wait for the job
    job = os.path.join(peerjobs.jobs_dir(opts), token)
    assert oct(os.stat(peerjobs.jobs_dir(opts)).st_mode & 0o777) == "0o700"
    assert peerjobs.result(opts, "hostA", token) == {"done": False}
    with pytest.raises(Failed, match=f"job {token} was not started by hostB"):
        peerjobs.result(opts, "hostB", token)
    gate.touch()
    done = wait_result(opts, "hostA", token)
    assert (done["name"], done["ip"]) == ("vm1", "10.79.0.5")
    assert done["pgid"] != os.getpgid(0)  # a session of its own: the master has no child to reap
    assert not os.path.exists(job)
    with pytest.raises(Failed, match="its result was read, or it is older than a day"):
        peerjobs.result(opts, "hostA", token)


def test_a_job_that_prints_no_json_says_why(opts):
    token = peerjobs.start(opts, "hostA", program("import sys; print('boom', file=sys.stderr); sys.exit(3)"))
    assert wait_result(opts, "hostA", token) == {"error": "salt-run failed (rc 3): boom", "retcode": 1}


@pytest.mark.parametrize("token", ["../etc", "ab", "AB" * 16, None, "g" * 32])
def test_only_a_token_of_32_hex_digits_is_looked_up(opts, token):
    with pytest.raises(Failed, match="a job is 32 hexadecimal digits"):
        peerjobs.result(opts, "hostA", token)


def test_jobs_older_than_a_day_are_swept(opts):
    old = peerjobs.start(opts, "hostA", program("print('{}')"))
    wait_result(opts, "hostA", peerjobs.start(opts, "hostA", program("print('{}')")))
    day_ago = time.time() - peerjobs.MAX_AGE - 60
    os.utime(os.path.join(peerjobs.jobs_dir(opts), old), (day_ago, day_ago))
    peerjobs.start(opts, "hostB", program("print('{}')"))
    assert not os.path.exists(os.path.join(peerjobs.jobs_dir(opts), old))


def test_the_job_runs_salt_run_of_this_master_with_strings_unparsed(opts):
    argv = peerjobs.salt_run_argv(opts, "pairvm.create", {"name": "yes", "home": "hostA", "memory": 512})
    assert argv[:3] == [sys.executable, "-c", "import salt.scripts; salt.scripts.salt_run()"]
    assert argv[3:] == [f"--config-dir={os.path.dirname(opts['conf_file'])}", "--out=json",
                        "--log-level=quiet", "--no-parse=name,home", "pairvm.create", "name=yes",
                        "home=hostA", "memory=512"]
    assert json.loads(json.dumps(argv)) == argv
