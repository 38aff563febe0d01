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
    static = ["--static"] if tool == "salt" else []  # salt-run prints one document anyway
    proc = subprocess.run(salt_argv(tool, "--out=json", *static, *args), capture_output=True, text=True)
    try:
        return json.loads(proc.stdout)
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
        try:
            if sorted(_salt_json("salt", "--timeout=5", "*", "test.ping")) == sorted(names):
                return
        except RuntimeError:  # no minion has connected yet: salt prints no JSON
            pass
        time.sleep(2)
    raise RuntimeError(f"minions {names} did not answer the master within {timeout}s")


def _wait_for_boot(lab, vms, timeout=90):
    """Wait until each VM's test guest printed its marker on the serial console."""
    deadline = time.monotonic() + timeout
    for name, host in vms.items():
        log = f"/var/log/libvirt/qemu/{name}-serial.log"
        while "PAIRVM-GUEST-READY" not in lab.hosts[host].run(["cat", log], check=False).stdout:
            if time.monotonic() > deadline:
                print(f"(demo: {name} did not print its boot marker within {timeout}s)")
                return
            time.sleep(1)


def show(title, data):
    print(f"\n### {title}")
    print(salt.utils.yaml.safe_dump(data, default_flow_style=False).rstrip())


def run():
    lab = Lab().up()
    start_salt(lab)
    _salt_json("salt-run", "fileserver.update")  # a master just started may not list new files yet
    synced = _salt_json("salt-run", "saltutil.sync_all")
    show("salt-run saltutil.sync_all (what the master synced)", {k: v for k, v in synced.items() if v})
    _salt_json("salt", "*", "saltutil.sync_all")
    host_orch = _salt_json("salt-run", "state.orchestrate", "pairvm.orch.host")
    steps = next(iter(host_orch.get("data", {}).values()), {})
    show("salt-run state.orchestrate pairvm.orch.host (host setup, per step: ok?)", {
        sid.split("_|-")[1]: s["result"] for sid, s in steps.items()
    })
    orch = _salt_json("salt-run", "state.orchestrate", "pairvm.orch.apply")
    steps = next(iter(orch.get("data", {}).values()), {})
    show("salt-run state.orchestrate pairvm.orch.apply (per step: ok?)", {
        sid.split("_|-")[1]: s["result"] for sid, s in steps.items()
    })
    _wait_for_boot(lab, {"demo1": "hostA", "demo2": "hostB"})
    show("salt '*' pairvm.list", _salt_json("salt", "*", "pairvm.list"))
    show("salt hostA pairvm.serial demo1 lines=3",
         _salt_json("salt", "hostA", "pairvm.serial", "demo1", "lines=3"))
    show("salt '*' pairvm.check_system", _salt_json("salt", "*", "pairvm.check_system"))
    host_cli = lab.hosts["hostA"].run(["pairvm", "list"], check=False)
    print("\n### pairvm list (the host command, on hostA)\n" + host_cli.stdout + host_cli.stderr)
    print(NEXT_STEPS)


NEXT_STEPS = """
The pair is up. Go on with:
  scripts/lab-salt '*' pairvm.list              # salt against the lab master
  scripts/lab-salt-run pairvm.list               # both hosts merged
  scripts/lab-salt hostA pairvm.stop demo1       # stop, start, cdrom, resize, ...
  scripts/lab-salt-run pairvm.create demo3 hostB 128 64M
  .venv/bin/python -m tests.lab shell hostB      # then: pairvm list; pairvm serial demo2
  .venv/bin/python -m tests.lab shell hostA      # a shell on hostA: pairvm help,
                                                 #   pairvm create demo4 here 128 64M
Tear it down with:
  scripts/demo down
"""
