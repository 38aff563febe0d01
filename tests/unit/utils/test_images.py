"""pairvmlib.images: the image catalogue, the guest's host name and the password hash."""

import crypt
import re

import pytest

from pairvmlib import images
from pairvmlib.errors import Invalid

PLAINTEXT = "correct horse battery staple"
HASH = crypt.crypt(PLAINTEXT, crypt.mksalt(crypt.METHOD_SHA512))
SHA = "a" * 64


def test_catalogue_is_normalized():
    catalogue = images.catalogue({"images": {
        "bookworm": {"source": "https://images.example.net/bookworm.qcow2", "format": "qcow2",
                     "sha256": SHA.upper()},
        "local.raw": {"source": "/srv/images/x.raw", "format": "raw", "sha256": SHA},
    }})
    assert catalogue["bookworm"]["sha256"] == SHA and catalogue["local.raw"]["format"] == "raw"
    assert images.catalogue({}) == {}


@pytest.mark.parametrize("entry, why", [
    ({"source": "ftp://x/y", "format": "raw", "sha256": SHA}, "images.b.source: must be an absolute path"),
    ({"source": "relative.raw", "format": "raw", "sha256": SHA}, "images.b.source"),
    ({"source": "/a/../etc/shadow", "format": "raw", "sha256": SHA}, "images.b.source"),
    ({"source": "/x.raw", "format": "vmdk", "sha256": SHA}, "images.b.format: must be one of raw, qcow2"),
    ({"source": "/x.raw", "format": "raw", "sha256": "abc"}, "images.b.sha256: must be 64 hexadecimal"),
    ({"source": "/x.raw", "format": "raw"}, "images.b.sha256: is required"),
    ({"source": "/x.raw", "format": "raw", "sha256": SHA, "extra": 1}, "unknown key(s) extra"),
])
def test_a_bad_catalogue_entry_is_named(entry, why):
    with pytest.raises(Invalid, match=re.escape(why)):
        images.catalogue({"images": {"b": entry}})


def test_a_bad_image_name_is_refused():
    with pytest.raises(Invalid, match="is not an image name"):
        images.catalogue({"images": {"../x": {"source": "/x", "format": "raw", "sha256": SHA}}})


@pytest.mark.parametrize("name", ["vm1.example.org", "a.b", "Web-1.Example.ORG.", "x" * 63 + ".org"])
def test_valid_fqdns(name):
    assert images.validate_fqdn(name) == name.rstrip(".").lower()


@pytest.mark.parametrize("name", ["vm1", "", "-a.org", "a-.org", "a..org", "a.123", "a_b.org",
                                  "x" * 64 + ".org", ("a" * 62 + ".") * 4 + "org", "a b.org", None])
def test_invalid_fqdns_are_refused(name):
    with pytest.raises(Invalid, match="not a fully qualified domain name"):
        images.validate_fqdn(name)


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
