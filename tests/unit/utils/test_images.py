"""pairvmlib.images: the image catalogue, the guest's host name and the password hash."""

import crypt
import re

import pytest

from pairvmlib import images
from pairvmlib.errors import Invalid

PLAINTEXT = "correct horse battery staple"
HASH = crypt.crypt(PLAINTEXT, crypt.mksalt(crypt.METHOD_SHA512))
SHA = "a" * 64


NONE = {"default_images": False}


def test_catalogue_is_normalized():
    catalogue = images.catalogue({**NONE, "images": {
        "bookworm": {"source": "https://images.example.net/bookworm.qcow2", "format": "qcow2",
                     "sha256": SHA.upper()},
        "local.raw": {"source": "/srv/images/x.raw", "format": "raw", "sha256": SHA},
        "sums": {"source": "/srv/images/y.raw", "format": "raw", "checksums": "SHA512SUMS"},
    }})
    assert catalogue["bookworm"] == {"source": "https://images.example.net/bookworm.qcow2", "format": "qcow2",
                                     "sha256": SHA, "checksums": None}
    assert catalogue["local.raw"]["format"] == "raw"
    assert catalogue["sums"] == {"source": "/srv/images/y.raw", "format": "raw", "sha256": None,
                                 "checksums": "/srv/images/SHA512SUMS"}
    assert images.catalogue(NONE) == {}


def test_out_of_the_box_the_current_debian_and_ubuntu_lts_images_checked_by_their_checksum_files():
    catalogue = images.catalogue({})
    assert set(catalogue) == {"trixie", "bookworm", "noble", "jammy"}
    assert catalogue["trixie"] == {
        "source": "https://cloud.debian.org/images/cloud/trixie/latest/debian-13-generic-amd64.qcow2",
        "format": "qcow2", "sha256": None,
        "checksums": "https://cloud.debian.org/images/cloud/trixie/latest/SHA512SUMS"}
    assert catalogue["noble"] == {
        "source": "https://cloud-images.ubuntu.com/noble/current/noble-server-cloudimg-amd64.img",
        "format": "qcow2", "sha256": None,
        "checksums": "https://cloud-images.ubuntu.com/noble/current/SHA256SUMS"}
    assert all(entry["checksums"] and not entry["sha256"] for entry in catalogue.values())


def test_pillar_points_the_defaults_at_a_mirror_pins_a_hash_removes_and_adds_entries():
    catalogue = images.catalogue({
        "image_mirrors": {"debian": "http://mirror.example.net/debian-cloud/"},
        "images": {"bookworm": {"sha256": SHA}, "jammy": None,
                   "mine": {"mirror": "debian", "path": "x/y.raw", "format": "raw", "checksums": "SUMS"}},
    })
    assert set(catalogue) == {"trixie", "bookworm", "noble", "mine"}
    assert catalogue["trixie"]["source"].startswith("http://mirror.example.net/debian-cloud/trixie/latest/")
    assert catalogue["trixie"]["checksums"] == "http://mirror.example.net/debian-cloud/trixie/latest/SHA512SUMS"
    assert catalogue["bookworm"]["sha256"] == SHA and catalogue["bookworm"]["checksums"] is None
    assert catalogue["bookworm"]["source"].startswith("http://mirror.example.net/debian-cloud/bookworm/")
    assert catalogue["noble"]["source"].startswith("https://cloud-images.ubuntu.com/")
    assert catalogue["mine"]["checksums"] == "http://mirror.example.net/debian-cloud/x/SUMS"
    # a source of its own replaces a default's mirror and path
    own = images.catalogue({"images": {"noble": {"source": "/srv/noble.img"}}})["noble"]
    assert own["source"] == "/srv/noble.img" and own["checksums"] == "/srv/SHA256SUMS"


@pytest.mark.parametrize("entry, why", [
    ({"source": "ftp://x/y", "format": "raw", "sha256": SHA}, "images.b.source: must be an absolute path"),
    ({"source": "relative.raw", "format": "raw", "sha256": SHA}, "images.b.source"),
    ({"source": "/a/../etc/shadow", "format": "raw", "sha256": SHA}, "images.b.source"),
    ({"source": "/x.raw", "format": "vmdk", "sha256": SHA}, "images.b.format: must be one of raw, qcow2"),
    ({"source": "/x.raw", "format": "raw", "sha256": "abc"}, "images.b.sha256: must be 64 hexadecimal"),
    ({"source": "/x.raw", "format": "raw"}, "images.b: needs sha256"),
    ({"source": "/x.raw", "format": "raw", "sha256": SHA, "checksums": "S"}, "images.b: give sha256"),
    ({"source": "/x.raw", "format": "raw", "checksums": "../S"}, "images.b.checksums"),
    ({"source": "/x.raw", "format": "raw", "checksums": "ftp://x/S"}, "images.b.checksums"),
    ({"mirror": "gentoo", "path": "x", "format": "raw", "sha256": SHA}, "images.b.mirror: 'gentoo' is not"),
    ({"mirror": "debian", "path": "../x", "format": "raw", "sha256": SHA}, "images.b.path"),
    ({"mirror": "debian", "format": "raw", "sha256": SHA}, "images.b.path: is required"),
    ({"format": "raw", "sha256": SHA}, "images.b.source: is required"),
    ({"source": "/x.raw", "sha256": SHA}, "images.b.format: is required"),
    ({"source": "/x.raw", "format": "raw", "sha256": SHA, "extra": 1}, "unknown key(s) extra"),
])
def test_a_bad_catalogue_entry_is_named(entry, why):
    with pytest.raises(Invalid, match=re.escape(why)):
        images.catalogue({"images": {"b": entry}})


@pytest.mark.parametrize("pillar, why", [
    ({"images": {"../x": {"source": "/x", "format": "raw", "sha256": SHA}}}, "is not an image name"),
    ({"image_mirrors": {"debian": "file:///srv"}}, "image_mirrors.debian: must be an http(s) URL"),
    ({"default_images": "no"}, "default_images: must be true or false"),
    ({"images": ["bookworm"]}, "images: must be a mapping"),
])
def test_a_bad_catalogue_setting_is_named(pillar, why):
    with pytest.raises(Invalid, match=re.escape(why)):
        images.catalogue(pillar)


DEBIAN_SUMS = f"""{"1" * 128}  debian-13-generic-amd64.json
{"a" * 128}  debian-13-generic-amd64.qcow2
{"b" * 128}  debian-13-generic-amd64.raw
"""
UBUNTU_SUMS = f"""{"C" * 64} *noble-server-cloudimg-amd64.img
{"d" * 64} *noble-server-cloudimg-amd64.img.manifest
"""


def test_the_digest_comes_from_the_distributions_checksum_file():
    assert images.expected_digest(DEBIAN_SUMS, "debian-13-generic-amd64.qcow2", "u") == ("sha512", "a" * 128)
    assert images.expected_digest(UBUNTU_SUMS, "noble-server-cloudimg-amd64.img", "u") == ("sha256", "c" * 64)
    assert images.expected_digest(f"{SHA}  ./x.raw\n", "x.raw", "u") == ("sha256", SHA)


@pytest.mark.parametrize("text, why", [
    (DEBIAN_SUMS, "does not list debian-13-generic-amd64.img: nothing was written"),
    ("", "does not list"),
    (f"{SHA}  debian-13-generic-amd64.img.bak\n", "does not list"),
    (f"{SHA}  debian-13-generic-amd64.img\n{'e' * 64}  debian-13-generic-amd64.img\n", "2 different digests"),
    (f"{'a' * 63}  debian-13-generic-amd64.img\n", "does not list"),
])
def test_a_checksum_file_that_does_not_list_the_image_once_is_refused(text, why):
    with pytest.raises(Invalid, match=re.escape(why)):
        images.expected_digest(text, "debian-13-generic-amd64.img", "http://m/SHA512SUMS")


@pytest.mark.parametrize("name", ["vm1", "vm1.example.org", "a.b", "Web-1.Example.ORG.", "x" * 63 + ".org"])
def test_valid_host_names(name):
    assert images.validate_hostname(name) == name.rstrip(".").lower()


@pytest.mark.parametrize("name", ["", "-a.org", "a-.org", "a..org", "a.123", "a_b.org", "x" * 64 + ".org",
                                  ("a" * 62 + ".") * 4 + "org", "a b.org", None, "123"])
def test_invalid_host_names_are_refused(name):
    with pytest.raises(Invalid, match="is not a valid host name"):
        images.validate_hostname(name)


def test_the_guest_host_name_is_the_vms_name_with_the_pillar_domain_unless_given():
    assert images.guest_hostname("web1", None, {}) == "web1"
    assert images.guest_hostname("web1", None, {"guest_domain": "Example.org."}) == "web1.example.org"
    given = images.guest_hostname("web1", "www.example.net", {"guest_domain": "example.org"})
    assert given == "www.example.net"
    with pytest.raises(Invalid, match="guest_domain: 'ex ample' is not a valid host name"):
        images.guest_hostname("web1", None, {"guest_domain": "ex ample"})


def test_only_a_sha512_crypt_hash_is_a_password_hash():
    assert images.is_password_hash(HASH)
    assert images.is_password_hash("$6$rounds=5000$" + HASH.split("$", 3)[2] + "$" + HASH.split("$")[-1])
    for bad in (PLAINTEXT, "$1$abc$def", "$5$salt$" + "a" * 43, HASH + "x", None, 6):
        assert not images.is_password_hash(bad)


def test_guest_ssh_keys():
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA root@admin"
    assert images.guest_ssh_keys({"guest_ssh_keys": [key + " "]}) == [key]
    assert images.guest_ssh_keys({}) == []
    with pytest.raises(Invalid, match=re.escape("guest_ssh_keys[0]")):
        images.guest_ssh_keys({"guest_ssh_keys": ["not a key\nssh-rsa AAAA"]})


# --- seed files ---------------------------------------------------------------------------------
