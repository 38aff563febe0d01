"""salt/pairvm/reactor/*.sls rendered as the master's reactor renders them (Salt's jinja, then YAML)
for the beacon's events: what runs for each (tests/integration/test_watch.py runs them for real)."""

import pytest
import yaml

import salt.config
import salt.utils.templates
from tests.unit.conftest import REPO


def render(sls, data):
    text = (REPO / "salt" / "pairvm" / "reactor" / sls).read_text()
    out = salt.utils.templates.render_jinja_tmpl(text, {"data": data, "tag": "t", "saltenv": "base",
                                                       "opts": salt.config.DEFAULT_MASTER_OPTS.copy()})
    return yaml.safe_load(out) or {}


def beacon(event, **state):
    return {"id": "hostB", "resource": "vm1", "event": event, "connection": "StandAlone",
            "split_brain": False, **state}


def test_a_plain_disconnect_is_reconnected_on_that_host():
    assert render("drbd.sls", beacon("connection_lost")) == {"pairvm-reactor-reconnect-vm1": {
        "local.pairvm.reconnect": [{"tgt": "hostB"}, {"args": [{"name": "vm1"}]}]}}


@pytest.mark.parametrize("data", [
    beacon("connection_lost", connection="Connecting"),  # DRBD reconnects by itself
    beacon("connection_lost", split_brain=True),  # never touched
    beacon("connection_restored", connection="Connected"),
    beacon("disk_not_uptodate"), beacon("resync_started"), beacon("role_changed"),
])
def test_nothing_else_reconnects(data):
    assert render("drbd.sls", data) == {}


def test_a_split_brain_is_only_an_alert():
    ran = render("drbd.sls", beacon("split_brain", split_brain=True))
    (sid, call), = ran.items()
    assert list(call) == ["runner.event.send"]
    args = {k: v for item in call["runner.event.send"][0]["args"] for k, v in item.items()}
    assert args["tag"] == "pairvm/alert/split_brain/vm1"
    assert args["data"]["host"] == "hostB" and "nothing was discarded" in args["data"]["message"]


def test_a_starting_minion_of_the_pair_gets_autostart():
    ran = render("autostart.sls", {"id": "hostA"})
    assert ran == {"pairvm-reactor-autostart": {"local.pairvm.autostart": [
        {"tgt": "hostA and I@pairvm:pair:hostA:admin_ip:*"}, {"tgt_type": "compound"}]}}
