"""Installing a guest OS: the image catalogue, the guest's host name, the password hash.

Pure (no I/O): the checks of ``pairvm.image``'s inputs. Problems raise
``Invalid`` naming the key and why; a password is never echoed.
"""

import re

from pairvmlib import checks
from pairvmlib.errors import Invalid

IMAGE_FORMATS = ("raw", "qcow2")
IMAGE_KEYS = ("source", "format", "sha256")
_IMAGE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}", re.IGNORECASE)
_URL_RE = re.compile(r"https?://[^\s/?#@]+(/[^\s#]*)?")
_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
# SHA-512 crypt (glibc crypt(3) "$6$"): optional rounds, salt of up to 16, 86 characters of hash.
_SHA512_CRYPT_RE = re.compile(r"\$6\$(?:rounds=[0-9]{1,9}\$)?[./A-Za-z0-9]{1,16}\$[./A-Za-z0-9]{86}")
_SSH_KEY_RE = re.compile(
    r"(?:ssh-[a-z0-9-]+|ecdsa-sha2-[a-z0-9-]+|sk-[a-z0-9@.-]+) [A-Za-z0-9+/=]+(?: [^\n]*)?"
)


def _image_source(value):
    if isinstance(value, str) and value.startswith("/"):
        return checks.abs_path(value)
    if isinstance(value, str) and _URL_RE.fullmatch(value) and not checks.NOT_TEXT_RE.search(value):
        return value
    raise Invalid(f"must be an absolute path or an http(s) URL without spaces, got {value!r}")


def _sha256(value):
    if not isinstance(value, str) or not _SHA256_RE.fullmatch(value):
        raise Invalid(f"must be 64 hexadecimal digits (sha256sum of the file), got {value!r}")
    return value.lower()


def catalogue(pairvm_pillar):
    """
    Validate the image catalogue, pillar ``pairvm:images``: {name: {source, format, sha256}}.

    ``name`` is 1 to 64 lower-case letters, digits, ``.``, ``_`` or ``-``
    (e.g. ``bookworm``); ``source`` an absolute path on the host or an
    http(s) URL; ``format`` ``raw`` or ``qcow2``; ``sha256`` the file's
    sha256sum. Returns the normalized catalogue ({} when none is set).

    Example:

    .. code-block:: python

        images.catalogue(__pillar__.get("pairvm", {}))
    """
    errors = []
    raw = checks.mapping(checks.mapping(pairvm_pillar, "pairvm", errors).get("images"), "images", errors)
    result = {}
    for name in sorted(raw, key=str):
        where = f"images.{name}"
        if not isinstance(name, str) or not _IMAGE_NAME_RE.fullmatch(name):
            errors.append(f"images: {name!r} is not an image name (1 to 64 lower-case letters, "
                          f"digits, '.', '_' or '-', starting with a letter or digit)")
            continue
        entry = checks.mapping(raw[name], where, errors)
        checks.unknown(entry, IMAGE_KEYS, where, errors)
        image = {}
        for key, func, args in (("source", _image_source, ()), ("format", checks.choice, (IMAGE_FORMATS,)),
                                ("sha256", _sha256, ())):
            if entry.get(key) is None:
                errors.append(f"{where}.{key}: is required")
            else:
                image[key] = checks.gather(errors, f"{where}.{key}: ", func, entry[key], *args)
        result[name] = image
    checks.raise_all(errors)
    return result


def guest_ssh_keys(pairvm_pillar):
    """
    Validate pillar ``pairvm:guest_ssh_keys``: SSH public keys (one line each)
    that an installed guest's root accepts. Returns the list ([] when unset).

    Example:

    .. code-block:: python

        images.guest_ssh_keys(__pillar__.get("pairvm", {}))
    """
    errors = []
    raw = checks.mapping(pairvm_pillar, "pairvm", errors).get("guest_ssh_keys")
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise Invalid(f"guest_ssh_keys: must be a list of SSH public keys, got {raw!r}")
    for index, key in enumerate(raw):
        if not isinstance(key, str) or not _SSH_KEY_RE.fullmatch(key.strip()) \
                or checks.NOT_TEXT_RE.search(key):
            errors.append(f"guest_ssh_keys[{index}]: must be one SSH public key line "
                          f"('ssh-ed25519 AAAA... comment'), got {key!r}")
    checks.raise_all(errors)
    return [key.strip() for key in raw]


def validate_fqdn(hostname):
    """
    Check a guest's host name: a fully qualified domain name (RFC 1123).

    Two or more labels of 1 to 63 letters, digits or inner hyphens, at most
    253 characters in all, a last label that is not all digits; one trailing
    dot is allowed. Returns it in lower case, without the trailing dot.

    Example:

    .. code-block:: python

        images.validate_fqdn("web1.example.org")
    """
    why = None
    name = hostname[:-1] if isinstance(hostname, str) and hostname.endswith(".") else hostname
    if not isinstance(name, str) or not name:
        why = "it is empty or not a string"
    elif len(name) > 253:
        why = f"it has {len(name)} characters, more than 253"
    else:
        labels = name.split(".")
        bad = [label for label in labels if not _LABEL_RE.fullmatch(label)]
        if len(labels) < 2:
            why = "it has one label: give the domain too (e.g. web1.example.org)"
        elif bad:
            why = (f"label {bad[0]!r} is not 1 to 63 letters, digits or hyphens "
                   f"(no hyphen first or last)")
        elif labels[-1].isdigit():
            why = "its last label is all digits"
    if why:
        raise Invalid(f"hostname: {hostname!r} is not a fully qualified domain name: {why}")
    return name.lower()


def is_password_hash(value):
    """
    True if ``value`` is a SHA-512 crypt hash (``$6$salt$hash``, as made by
    ``openssl passwd -6`` or ``mkpasswd -m sha-512``). Never echo ``value``:
    it may be a plaintext password given by mistake.

    Example:

    .. code-block:: python

        images.is_password_hash(password)
    """
    return isinstance(value, str) and bool(_SHA512_CRYPT_RE.fullmatch(value))


