"""What the host states write, checked by the real tools (no daemons, no namespace).

- ifupdown: the rendered interfaces file (the seed's network with a VLAN, the
  lab's) is parsed by ``ifquery -i FILE`` and dry-run by the very
  ``check_cmd`` of salt/pairvm/host/network.sls (``ifup --no-act
  --state-dir=DIR -a -i FILE``), which prints the commands without running
  them. A broken file is rc 1 with ``FILE:LINE`` on stderr.
- DRBD: ``global_common.conf`` (pairvm_render.drbd_global_common, the text
  pairvm.drbd_common_config returns) passes the drbd.sls check
  (``drbdadm dump all -c FILE``), and with a resource beside it, with and
  without the shared secret, ``drbdadm dump`` of the 8.4 parser
  (``DRBD_DRIVER_VERSION_OVERRIDE=8.4.11``, ``__DRBD_NODE__``).
- bash: the completion file, rendered as Salt renders it, completes command
  names, VM names of the machines dir and options.
"""

import inspect
import os
import re
import shlex
import shutil
import subprocess

import jinja2
import pytest

import salt.utils.jinja  # noqa: F401 - registers Salt's filters
from pairvmlib import commands, network, render
from salt.utils.decorators.jinja import JinjaFilter
from tests.unit.conftest import REPO, load
from tests.unit.utils.test_network import LAB, SEED, SEED_ARGS
from tests.unit.utils.test_render import TIMING, sample_record

host = network

states = load("_states/pairvm_host.py", "pairvm_host_states_tools")

DRBD_ENV = {"DRBD_DRIVER_VERSION_OVERRIDE": "8.4.11"}
# What the state pairvm_host.drbd_global_common runs on the new text (Salt appends the file).
DRBD_CHECK_CMD = inspect.signature(states.drbd_global_common).parameters["check_cmd"].default
needs_ifupdown = pytest.mark.skipif(not (shutil.which("ifup") and shutil.which("ifquery")),
                                    reason="needs ifupdown")
needs_drbdadm = pytest.mark.skipif(
    not (shutil.which("drbdadm") and os.path.exists("/lib/drbd/drbdadm-84")),
    reason="needs drbd-utils (drbdadm and /lib/drbd/drbdadm-84)")


def sls_value(sls, key):
    """The value of ``- key: value`` in an SLS file of salt/pairvm/host (one line)."""
    text = (REPO / "salt/pairvm/host" / sls).read_text()
    return re.search(rf"^\s+- {key}: (.+)$", text, re.M)[1]


def run(argv, **env):
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False,
                          env=dict(os.environ, **env))


# --- ifupdown -------------------------------------------------------------------------

def ifup_check(path, state_dir):
    """The network.sls check_cmd on ``path``, with a private state dir."""
    argv = sls_value("network.sls", "check_cmd").split()
    argv = [f"--state-dir={state_dir}" if a.startswith("--state-dir=") else a for a in argv]
    assert argv[-1] == "-i", "check_cmd must end with -i: Salt appends the temporary file"
    return run([*argv, str(path)])


@needs_ifupdown
@pytest.mark.parametrize("network, args, names, expected", [
    (SEED, SEED_ARGS, ["eth0", "eth1", "vlan1000", "br0"], [
        "ip addr add 192.0.2.11/255.255.255.0 broadcast 192.0.2.255",
        "ip route add default via 192.0.2.1  dev eth0",
        "ip addr add 198.51.100.11/255.255.255.0 broadcast 198.51.100.255",
        "ip link set dev vlan1000 up", "ip link set dev br0 up"]),
    (LAB, ("10.77.0.11", "10.78.0.11", "br0"), ["eth0", "eth1", "br0"], [
        "ip addr add 10.77.0.11/255.255.255.0 broadcast 10.77.0.255",
        "ip addr add 10.78.0.11/255.255.255.0 broadcast 10.78.0.255", "ip link set dev br0 up"]),
], ids=["seed", "lab"])
def test_ifupdown_parses_and_dry_runs_the_rendered_file(tmp_path, network, args, names, expected):
    path = tmp_path / "pairvm"
    path.write_text(host.interfaces(network, *args))
    listed = run(["ifquery", "-i", str(path), "--list", "-a"])
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == ["lo", *names]
    assert run(["ifquery", "-i", str(path), "br0"]).stdout.splitlines()[:3] == [
        f"bridge_ports: {network['bridge']['ports'][0]}", "bridge_stp: off", "bridge_fd: 0"]
    dry = ifup_check(path, tmp_path / "state")
    assert dry.returncode == 0, dry.stderr
    for line in expected:
        assert line in dry.stderr  # ifup --no-act prints the commands on stderr
    assert os.listdir(tmp_path / "state") == []  # --no-act recorded nothing


@needs_ifupdown
def test_ifupdown_dry_run_of_a_dotted_vlan_creates_it_natively(tmp_path):
    path = tmp_path / "pairvm"
    path.write_text(host.interfaces(dict(SEED, vlans={"eth0.1000": {}}, bridge={"ports": ["eth0.1000"]}),
                                     *SEED_ARGS))
    dry = ifup_check(path, tmp_path / "state")
    assert dry.returncode == 0, dry.stderr
    assert "ip link add link eth0 name eth0.1000 type vlan id 1000" in dry.stderr


@needs_ifupdown
@pytest.mark.parametrize("good, bad, message", [
    ("# Managed by", "address 192.0.2.99/24\n# Managed by", "misplaced option"),
    ("iface eth1 inet static", "iface eth1 inet statik", "unknown or no method"),
    ("iface br0 inet manual", "iface br0 inet", "unknown or no method"),
], ids=["misplaced-option", "unknown-method", "no-method"])
def test_ifupdown_rejects_a_broken_file_with_file_and_line(tmp_path, good, bad, message):
    text = host.interfaces(SEED, *SEED_ARGS)
    line = text[:text.index(good)].count("\n") + 1
    path = tmp_path / "pairvm"
    path.write_text(text.replace(good, bad, 1))
    for proc in (ifup_check(path, tmp_path / "state"), run(["ifquery", "-i", str(path), "--list", "-a"])):
        assert proc.returncode == 1
        assert f"{path}:{line}: {message}" in proc.stderr


# --- DRBD -----------------------------------------------------------------------------

def drbdadm(conf, *args, node="hostA"):
    return run(["drbdadm", "-c", str(conf), *args], **DRBD_ENV, __DRBD_NODE__=node)


@needs_drbdadm
@pytest.mark.parametrize("options", [TIMING, {}, dict(TIMING, shared_secret="Zm9v+bar/baz=")],
                         ids=["timing", "defaults", "secret"])
def test_drbd_check_cmd_accepts_global_common(tmp_path, options):
    path = tmp_path / "global_common.conf"
    path.write_text(render.drbd_global_common(options))
    proc = run([*DRBD_CHECK_CMD.split(), str(path)], **DRBD_ENV)
    assert proc.returncode == 0, proc.stderr
    dump = proc.stdout
    assert "usage-count no;" in dump
    assert re.search(r"after-sb-0pri\s+discard-zero-changes;", dump)
    assert re.search(r"after-sb-1pri\s+disconnect;", dump) and re.search(r"after-sb-2pri\s+disconnect;", dump)
    assert re.search(r"protocol\s+C;", dump)
    assert ("resync-rate" in dump) is ("resync_rate" in options)
    assert "shared-secret" not in dump  # per resource, never in global_common


@needs_drbdadm
@pytest.mark.parametrize("secret", [None, "Zm9v+bar/baz="], ids=["no-secret", "secret"])
def test_drbdadm_84_dumps_common_and_resource_with_and_without_secret(tmp_path, secret):
    options = dict(TIMING, **({"shared_secret": secret} if secret else {}))
    (tmp_path / "global_common.conf").write_text(render.drbd_global_common(options))
    (tmp_path / "web-1.res").write_text(render.drbd_resource(sample_record(), options))
    conf = tmp_path / "drbd.conf"
    conf.write_text(f'include "{tmp_path}/global_common.conf";\ninclude "{tmp_path}/*.res";\n')
    proc = drbdadm(conf, "dump", "web-1")
    assert proc.returncode == 0, proc.stderr
    assert "node-id" not in proc.stdout
    assert re.search(r"resync-rate\s+100M;", proc.stdout) and re.search(r"connect-int\s+2;", proc.stdout)
    if secret:
        assert re.search(rf'shared-secret\s+"{re.escape(secret)}";', proc.stdout)
        assert re.search(r"cram-hmac-alg\s+sha1;", proc.stdout)
    else:
        assert "shared-secret" not in proc.stdout and "cram-hmac-alg" not in proc.stdout
    dry = drbdadm(conf, "-d", "up", "web-1")
    assert dry.returncode == 0, dry.stderr
    connect = next(line for line in dry.stdout.splitlines() if line.startswith("drbdsetup-84 connect "))
    assert ({"--cram-hmac-alg=sha1", f"--shared-secret={secret}"} <= set(connect.split())) is bool(secret)


@needs_drbdadm
def test_drbd_check_cmd_rejects_a_broken_global_common(tmp_path):
    path = tmp_path / "global_common.conf"
    path.write_text(render.drbd_global_common(TIMING).replace("protocol C;", "protocol C"))
    proc = run([*DRBD_CHECK_CMD.split(), str(path)], **DRBD_ENV)
    assert proc.returncode == 10
    assert f"{path}:" in proc.stderr


# --- bash completion ------------------------------------------------------------------

def render_completion(machines_dir):
    """Render salt/pairvm/files/pairvm.bash-completion with Salt's Jinja filters, from the
    command's table as the state does; /machines is the test's own directory here."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    env.filters.update(JinjaFilter.salt_jinja_filters)
    text = (REPO / "salt/pairvm/files/pairvm.bash-completion").read_text()
    rendered = env.from_string(text).render(spec=commands.completion_spec())
    assert rendered.count("/machines/*") == 1
    return rendered.replace("/machines/*", f"{shlex.quote(str(machines_dir))}/*")


@pytest.fixture
def completion(tmp_path):
    machines = tmp_path / "machines dir"
    machines.mkdir()
    for name in ("web1", "web2", "db", "_global", "Not-A-Vm", "toolongname123"):
        (machines / name).write_text("x")
    (machines / "dir1").mkdir()
    script = tmp_path / "pairvm"
    script.write_text(render_completion(machines))
    (tmp_path / "cdroms").mkdir()
    (tmp_path / "cdroms" / "debian.iso").write_text("")

    def complete(*words):
        words = ["pairvm", *words]
        probe = (f"source {script!s}\nCOMP_WORDS=({' '.join(repr(w) for w in words)})\n"
                 f"COMP_CWORD={len(words) - 1}\n_pairvm\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n")
        proc = subprocess.run(["bash", "--norc", "--noprofile", "-c", probe], capture_output=True, text=True,
                              timeout=30, check=False, cwd=tmp_path)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        return sorted(line for line in proc.stdout.splitlines() if line)

    return complete


@pytest.mark.skipif(not shutil.which("bash"), reason="needs bash")
def test_bash_completion_completes_commands_vms_and_options(completion):
    assert completion("s") == ["serial", "split_brain_victim", "start", "stop", "suppress", "swap",
                               "swaplive"]
    assert completion("split_brain_victim", "d") == ["db"]
    assert completion("split_brain_victim", "db", "--") == ["--no-snapshot"]
    assert "print_ssh_forwards" in completion("")
    assert completion("help", "de") == ["destroy"]
    assert completion("start", "") == ["db", "web1", "web2"]
    assert completion("start", "w") == ["web1", "web2"]
    assert completion("start", "web1", "--") == ["--away", "--disconnected"]
    assert completion("destroy", "db", "--y") == ["--yes-really"]
    assert completion("suppress", "db", "") == ["off", "on"]
    assert completion("cdrom", "db", "cdroms/") == ["cdroms/debian.iso"]
    assert completion("cdrom", "db", "e") == ["eject"]
    assert completion("i") == ["image"]
    assert completion("image", "w") == ["web1", "web2"]
    assert completion("list", "") == []
    assert completion("create", "") == []  # a new VM: not yet in the machines dir
    assert completion("create", "new1", "") == ["here", "there"]
    assert completion("create", "new1", "here", "1024", "10G", "--") == ["--ip", "--vcpus"]
    assert completion("chkconfig", "w") == ["web1", "web2"]
    assert completion("image", "db", "trixie", "--h") == ["--hostname"]
    assert completion("nonsense", "") == []
