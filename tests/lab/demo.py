"""The demo: the lab pair with salt daemons that stay up for the operator.

Unlike the test tiers (pytest-salt-factories), the demo starts plain
``salt-master`` and ``salt-minion`` daemons, so that the pair keeps running
after the demo command returns. ``scripts/lab-salt`` and ``scripts/lab-salt-run``
talk to its master; ``python -m tests.lab shell hostA`` enters a host, where
``pairvm`` works as on a production host.
"""

import json
import subprocess
import time

import salt.utils.yaml
from tests.lab import namespaces, saltlab
from tests.lab.hosts import DATA, REPO
from tests.lab.lab import Lab

SALT_DIR = DATA / "salt"
MASTER_DIR = SALT_DIR / "master"
VENV_BIN = REPO / ".venv" / "bin"


def _write_yaml(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(salt.utils.yaml.safe_dump(data, default_flow_style=False))


def salt_argv(tool, *args):
    """argv that runs a salt CLI tool against the demo master (control namespace)."""
    return namespaces.nsenter_argv(namespaces.CONTROL, mount=False) + [
        str(VENV_BIN / tool), f"--config-dir={MASTER_DIR}", *args,
    ]


def _salt_json(tool, *args):
    proc = subprocess.run(
        salt_argv(tool, "--out=json", "--static", *args), capture_output=True, text=True
    )
    try:
        return json.loads(proc.stdout or "{}")
    except ValueError as exc:
        raise RuntimeError(f"{tool} {' '.join(args)}: {proc.stdout}{proc.stderr}") from exc


def start_salt(lab):
    """Master in the control namespace, one minion per host, keys accepted."""
    config = saltlab.master_config(MASTER_DIR)
    config.update(root_dir=str(MASTER_DIR), user="root")
    _write_yaml(MASTER_DIR / "master", config)
    subprocess.run(
        namespaces.nsenter_argv(namespaces.CONTROL, mount=False)
        + [str(VENV_BIN / "salt-master"), f"--config-dir={MASTER_DIR}", "-d"],
        check=True,
    )
    for host in lab.hosts.values():
        minion = dict(saltlab.minion_config(), id=host.name, root_dir=str(host.dir / "salt"))
        _write_yaml(host.root / "etc/salt/minion", minion)
        host.run([str(VENV_BIN / "salt-minion"), "-d"])
    _wait_for_minions(list(lab.hosts))


def _wait_for_minions(names, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answered = _salt_json("salt", "--timeout=5", "*", "test.ping")
        if sorted(answered) == sorted(names):
            return
        time.sleep(2)
    raise RuntimeError(f"minions {names} did not answer the master within {timeout}s")


def show(title, data):
    print(f"\n### {title}")
    print(salt.utils.yaml.safe_dump(data, default_flow_style=False).rstrip())


def run():
    lab = Lab().up()
    start_salt(lab)
    show("salt-run saltutil.sync_all", _salt_json("salt-run", "saltutil.sync_all"))
    _salt_json("salt", "*", "saltutil.sync_all")
    applied = _salt_json("salt", "*", "state.apply", "pairvm")
    show("salt '*' state.apply pairvm (changes)", {
        host: {sid.split("_|-")[1]: bool(s["changes"]) for sid, s in states.items()}
        for host, states in applied.items()
    })
    show("salt '*' pairvm.list", _salt_json("salt", "*", "pairvm.list"))
    show("salt '*' pairvm.check_system", _salt_json("salt", "*", "pairvm.check_system"))
    host_cli = lab.hosts["hostA"].run(["pairvm", "list"], check=False)
    print("\n### pairvm list (the host command, on hostA)\n" + host_cli.stdout + host_cli.stderr)
    print(NEXT_STEPS)


NEXT_STEPS = """
The pair is up. Go on with:
  scripts/lab-salt '*' pairvm.check_system      # salt against the lab master
  scripts/lab-salt-run saltutil.sync_all         # runners on the lab master
  .venv/bin/python -m tests.lab shell hostA      # a shell on hostA: pairvm help
Tear it down with:
  scripts/demo down
"""
