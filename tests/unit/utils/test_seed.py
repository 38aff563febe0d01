"""pairvmlib.seed: the files of a cloud-init NoCloud seed, and the argv that makes the ISO."""

import crypt

import yaml

from pairvmlib import seed

HASH = crypt.crypt("correct horse battery staple", crypt.mksalt(crypt.METHOD_SHA512))


RECORD = {"name": "vm1", "ip": "10.79.0.5", "prefix": 24, "gateway": "10.79.0.1", "mac": "52:54:00:00:00:01"}


def test_seed_files_carry_the_hash_the_keys_the_script_and_the_network():
    files = seed.files(RECORD, "pairvm-vm1-1", "vm1.example.org", HASH, ["ssh-ed25519 AAAA k"],
                       "#!/bin/sh\necho hi\n")
    assert yaml.safe_load(files["meta-data"]) == {"instance-id": "pairvm-vm1-1",
                                                  "local-hostname": "vm1.example.org"}
    assert files["user-data"].startswith("#cloud-config\n")
    user = yaml.safe_load(files["user-data"])
    root = {"name": "root", "password": HASH, "type": "hash"}
    assert user["chpasswd"] == {"expire": False, "users": [root]}
    assert user["ssh_authorized_keys"] == ["ssh-ed25519 AAAA k"] and user["disable_root"] is False
    assert (user["hostname"], user["fqdn"]) == ("vm1", "vm1.example.org")
    assert user["write_files"][0]["content"] == "#!/bin/sh\necho hi\n"
    assert user["runcmd"] == [[user["write_files"][0]["path"]]]
    net = yaml.safe_load(files["network-config"])
    assert net == {"version": 1, "config": [{
        "type": "physical", "name": "eth0", "mac_address": "52:54:00:00:00:01",
        "subnets": [{"type": "static", "address": "10.79.0.5", "netmask": "255.255.255.0",
                     "gateway": "10.79.0.1"}]}]}


def test_seed_without_keys_or_script_has_neither():
    user = yaml.safe_load(seed.user_data(HASH, "vm1.example.org"))
    assert "ssh_authorized_keys" not in user and "runcmd" not in user and "write_files" not in user


def test_the_iso_is_labelled_for_nocloud_with_either_tool():
    paths = ["/w/meta-data", "/w/user-data"]
    assert seed.iso_argv("genisoimage", "/w/seed.iso", paths) == [
        "genisoimage", "-quiet", "-o", "/w/seed.iso", "-V", "cidata", "-J", "-R", *paths]
    assert seed.iso_argv("xorriso", "/w/seed.iso", paths)[:3] == ["xorriso", "-as", "mkisofs"]
    assert seed.VOLUME_ID == "cidata"
    assert list(seed.files({"ip": "10.79.0.5", "prefix": 24, "gateway": None, "mac": "52:54:00:00:00:01"},
                           "i", "h.example.org", HASH)) == list(seed.FILES)

