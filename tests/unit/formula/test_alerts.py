"""docs/alerts.yml: the real promtool accepts the rules, and they fire (promtool test rules) on the
series pairvm.metrics writes, and only then."""

import re
import subprocess

import yaml

from pairvmlib import metrics
from tests.unit.conftest import REPO

RULES = REPO / "docs" / "alerts.yml"


def promtool(*args, cwd=None):
    return subprocess.run(["promtool", *args], capture_output=True, text=True, check=False, cwd=cwd)


def test_promtool_accepts_the_rules():
    res = promtool("check", "rules", str(RULES))
    assert res.returncode == 0 and "5 rules found" in res.stdout, res.stdout + res.stderr


def test_the_rules_use_only_names_pairvm_writes():
    used = set(re.findall(r"pairvm_[a-z_]+", RULES.read_text()))
    assert used and used <= set(metrics.FAMILIES), used - set(metrics.FAMILIES)


SERIES = [
    ('pairvm_drbd_connection_state{instance="a",vm="vm1",state="Connected"}', "1 0x10"),
    ('pairvm_drbd_connection_state{instance="a",vm="vm2",state="Connected"}', "1x10"),
    ('pairvm_drbd_split_brain{instance="b",vm="vm3"}', "0 1"),
    # at 27 h: vm1's last success is 27 h old, vm2's 36 min
    ('pairvm_backup_last_success_timestamp_seconds{instance="b",vm="vm1"}', "0x1700"),
    ('pairvm_backup_last_success_timestamp_seconds{instance="a",vm="vm2"}', "95000x1700"),
    # vm1 runs on neither host, vm2 on instance b
    ('pairvm_vm_should_run{instance="a",vm="vm1"}', "1x10"),
    ('pairvm_vm_running{instance="a",vm="vm1"}', "0x10"),
    ('pairvm_vm_running{instance="b",vm="vm1"}', "0x10"),
    ('pairvm_vm_should_run{instance="a",vm="vm2"}', "1x10"),
    ('pairvm_vm_running{instance="a",vm="vm2"}', "0x10"),
    ('pairvm_vm_running{instance="b",vm="vm2"}', "1x10"),
]
# (time, alert, the labels of each alert expected then)
FIRING = [
    ("3m", "PairvmReplicationDown", []),
    ("7m", "PairvmReplicationDown", [{"instance": "a", "vm": "vm1", "state": "Connected"}]),
    ("2m", "PairvmSplitBrain", [{"instance": "b", "vm": "vm3"}]),
    ("27h", "PairvmBackupTooOld", [{"vm": "vm1"}]),
    ("6m", "PairvmVmNotRunning", [{"vm": "vm1"}]),
]


def cases(rules):
    """promtool's test cases, each expected alert with the annotations its rule renders."""
    by_name = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}

    def alert(name, labels):
        rule = by_name[name]
        annotations = {key: re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], text)
                       for key, text in rule["annotations"].items()}
        return {"exp_labels": {**labels, **rule["labels"]}, "exp_annotations": annotations}

    return {
        "interval": "1m",
        "input_series": [{"series": series, "values": values} for series, values in SERIES],
        "alert_rule_test": [
            {"eval_time": at, "alertname": name, "exp_alerts": [alert(name, lab) for lab in labels]}
            for at, name, labels in FIRING],
    }


def run_tests(tmp_path, rules_text):
    (tmp_path / "rules.yml").write_text(rules_text)
    tests = {"rule_files": ["rules.yml"], "evaluation_interval": "1m",
             "tests": [cases(yaml.safe_load(rules_text))]}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    return promtool("test", "rules", "tests.yml", cwd=tmp_path)


def test_the_alerts_fire_when_they_should(tmp_path):
    res = run_tests(tmp_path, RULES.read_text())
    assert res.returncode == 0, res.stdout + res.stderr


def test_a_broken_rule_is_caught(tmp_path):
    """Positive control: a rule that looks at the wrong state fails the same cases."""
    broken = RULES.read_text().replace('pairvm_drbd_connection_state{state="Connected"} == 0',
                                       'pairvm_drbd_connection_state{state="StandAlone"} == 1')
    res = run_tests(tmp_path, broken)
    assert res.returncode != 0 and "PairvmReplicationDown" in res.stdout + res.stderr
