"""Installing a guest OS: the image catalogue, the guest's host name, the password hash.

Pure (no I/O): the checks of ``pairvm.image``'s inputs, and reading a
distribution's checksum file. Problems raise ``Invalid`` naming the key and
why; a password is never echoed.
"""

import re

from pairvmlib import checks, defaults
from pairvmlib.errors import Invalid

IMAGE_FORMATS = ("raw", "qcow2")
IMAGE_KEYS = ("source", "mirror", "path", "format", "sha256", "checksums")
_IMAGE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}", re.IGNORECASE)
_URL_RE = re.compile(r"https?://[^\s/?#@]+(/[^\s#]*)?")
_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_PATH_RE = re.compile(r"[A-Za-z0-9._~-]+(?:/[A-Za-z0-9._~-]+)*")
# A line of sha256sum/sha512sum output: the digest, then " " and " " (text) or "*" (binary).
_CHECKSUM_LINE_RE = re.compile(r"([0-9a-fA-F]{64}|[0-9a-fA-F]{128}) [ *](.+)")
ALGORITHMS = {64: "sha256", 128: "sha512"}  # hex digits of a digest -> its algorithm
# SHA-512 crypt (glibc crypt(3) "$6$"): optional rounds, salt of up to 16, 86 characters of hash.
_SHA512_CRYPT_RE = re.compile(r"\$6\$(?:rounds=[0-9]{1,9}\$)?[./A-Za-z0-9]{1,16}\$[./A-Za-z0-9]{86}")
_SSH_KEY_RE = re.compile(
    r"(?:ssh-[a-z0-9-]+|ecdsa-sha2-[a-z0-9-]+|sk-[a-z0-9@.-]+) [A-Za-z0-9+/=]+(?: [^\n]*)?"
)


def _location(value):
    if isinstance(value, str) and value.startswith("/"):
        return checks.abs_path(value)
    if isinstance(value, str) and _URL_RE.fullmatch(value) and not checks.NOT_TEXT_RE.search(value):
        return value
    raise Invalid(f"must be an absolute path or an http(s) URL without spaces, got {value!r}")


def _sha256(value):
    if not isinstance(value, str) or not _SHA256_RE.fullmatch(value):
        raise Invalid(f"must be 64 hexadecimal digits (sha256sum of the file), got {value!r}")
    return value.lower()


def _relative_path(value):
    if not isinstance(value, str) or not _PATH_RE.fullmatch(value) or ".." in value.split("/"):
        raise Invalid(f"must be a relative path of letters, digits, '.', '_', '~', '-' and '/' "
                      f"without '..', got {value!r}")
    return value


def _checksums(value, source):
    """The checksum file: a bare name is beside ``source``; else an absolute path or URL."""
    if isinstance(value, str) and "/" not in value:
        return f"{source.rsplit('/', 1)[0]}/{_relative_path(value)}"
    return _location(value)


def _mirrors(pairvm_pillar, errors):
    given = checks.mapping(pairvm_pillar.get("image_mirrors"), "image_mirrors", errors)
    mirrors = dict(defaults.IMAGE_MIRRORS)
    for name, url in given.items():
        where = f"image_mirrors.{name}"
        if not isinstance(url, str) or not _URL_RE.fullmatch(url.rstrip("/")):
            errors.append(f"{where}: must be an http(s) URL (the base the entries' paths are below), "
                          f"got {url!r}")
        else:
            mirrors[name] = url.rstrip("/")
    return mirrors


def _entries(pairvm_pillar, errors):
    """The catalogue before checking: the defaults (unless ``default_images`` is false) with
    pillar's ``images`` over them, key by key (a ``source`` replaces a default's mirror and
    path, a ``sha256`` its checksum file; null removes an entry)."""
    raw = checks.mapping(pairvm_pillar.get("images"), "images", errors)
    use_defaults = checks.given(pairvm_pillar, "default_images", True)
    if not isinstance(use_defaults, bool):
        errors.append(f"default_images: must be true or false, got {use_defaults!r}")
        use_defaults = True
    entries = {name: dict(entry) for name, entry in defaults.IMAGES.items()} if use_defaults else {}
    for name, entry in raw.items():
        if entry is None:
            entries.pop(name, None)
            continue
        entry = checks.mapping(entry, f"images.{name}", errors)
        base = entries.get(name, {})
        if "source" in entry:
            base = {k: v for k, v in base.items() if k not in ("mirror", "path")}
        if "sha256" in entry:
            base = {k: v for k, v in base.items() if k != "checksums"}
        entries[name] = {**base, **entry}
    return entries


def _image(name, entry, mirrors, errors):
    where = f"images.{name}"
    checks.unknown(entry, IMAGE_KEYS, where, errors)
    source = entry.get("source")
    if source is None and entry.get("mirror") is not None:
        if entry["mirror"] not in mirrors:
            errors.append(f"{where}.mirror: {entry['mirror']!r} is not a mirror of image_mirrors "
                          f"({', '.join(sorted(mirrors))})")
            return None
        path = checks.gather(errors, f"{where}.path: ", checks.required, entry.get("path"), _relative_path)
        source = f"{mirrors[entry['mirror']]}/{path}" if path else None
    elif source is None:
        errors.append(f"{where}.source: is required (or mirror and path)")
    image = {"source": checks.gather(errors, f"{where}.source: ", _location, source) if source else None,
             "format": checks.gather(errors, f"{where}.format: ", checks.required, entry.get("format"),
                                     checks.choice, IMAGE_FORMATS),
             "sha256": None, "checksums": None}
    if entry.get("sha256") is not None and entry.get("checksums") is not None:
        errors.append(f"{where}: give sha256 (a pinned hash) or checksums (the file beside the image), "
                      f"not both")
    elif entry.get("sha256") is not None:
        image["sha256"] = checks.gather(errors, f"{where}.sha256: ", _sha256, entry["sha256"])
    elif entry.get("checksums") is not None and image["source"]:
        image["checksums"] = checks.gather(errors, f"{where}.checksums: ", _checksums, entry["checksums"],
                                           image["source"])
    else:
        errors.append(f"{where}: needs sha256 (the image's sha256sum) or checksums (the name of "
                      f"the checksum file beside it, e.g. SHA512SUMS)")
    return image


def catalogue(pairvm_pillar):
    """
    The image catalogue of ``pairvm.image``, validated: {name: {source, format,
    sha256, checksums}}.

    Out of the box, the current Debian and Ubuntu LTS cloud images of
    ``defaults.IMAGES`` (``default_images: false`` leaves them out), below the
    base URLs of ``defaults.IMAGE_MIRRORS`` (``image_mirrors`` points them at a
    mirror). Pillar ``images`` adds entries or changes a default's keys (null
    removes one). An entry has ``source`` (an absolute path on the host or
    an http(s) URL) or ``mirror`` and ``path``; ``format`` ``raw`` or
    ``qcow2``; and ``sha256`` (a pinned hash) or ``checksums`` (a
    ``sha256sum``/``sha512sum`` file: a bare name is beside the image, e.g.
    ``SHA512SUMS``). In the result ``source`` and ``checksums`` are whole
    URLs or paths, and one of ``sha256``, ``checksums`` is None. Names are 1
    to 64 lower-case letters, digits, ``.``, ``_`` or ``-``.

    Example:

    .. code-block:: python

        images.catalogue(__pillar__.get("pairvm", {}))
    """
    errors = []
    pairvm_pillar = checks.mapping(pairvm_pillar, "pairvm", errors)
    mirrors = _mirrors(pairvm_pillar, errors)
    result = {}
    for name, entry in sorted(_entries(pairvm_pillar, errors).items(), key=lambda item: str(item[0])):
        if not isinstance(name, str) or not _IMAGE_NAME_RE.fullmatch(name):
            errors.append(f"images: {name!r} is not an image name (1 to 64 lower-case letters, "
                          f"digits, '.', '_' or '-', starting with a letter or digit)")
            continue
        result[name] = _image(name, entry, mirrors, errors)
    checks.raise_all(errors)
    return result


def expected_digest(text, filename, where):
    """
    ``(algorithm, hex digest)`` of ``filename`` in the text of a checksum file
    (``sha256sum``/``sha512sum`` output, as Debian's ``SHA512SUMS`` and Ubuntu's
    ``SHA256SUMS``; the algorithm follows from the digest's length). Raises
    ``Invalid`` when the file does not list it, or lists it twice differently.

    Example:

    .. code-block:: python

        images.expected_digest(sums, "debian-13-generic-amd64.qcow2", url)
    """
    found = set()
    for line in text.splitlines():
        match = _CHECKSUM_LINE_RE.fullmatch(line.strip())
        if match and match.group(2).removeprefix("./") == filename:
            found.add(match.group(1).lower())
    if not found:
        raise Invalid(f"image: the checksum file {where} does not list {filename}: nothing was written")
    if len(found) > 1:
        raise Invalid(f"image: the checksum file {where} lists {filename} with {len(found)} "
                      f"different digests: nothing was written")
    digest = found.pop()
    return ALGORITHMS[len(digest)], digest


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


def validate_hostname(hostname):
    """
    Check a guest's host name: one label or a fully qualified domain name (RFC 1123).

    Labels of 1 to 63 letters, digits or inner hyphens, at most 253
    characters in all, a last label that is not all digits; one trailing
    dot is allowed. Returns it in lower case, without the trailing dot.

    Example:

    .. code-block:: python

        images.validate_hostname("web1.example.org")
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
        if bad:
            why = (f"label {bad[0]!r} is not 1 to 63 letters, digits or hyphens "
                   f"(no hyphen first or last)")
        elif labels[-1].isdigit():
            why = "its last label is all digits"
    if why:
        raise Invalid(f"hostname: {hostname!r} is not a valid host name: {why}")
    return name.lower()


def guest_hostname(vm, hostname, pairvm_pillar):
    """
    The guest's host name: ``hostname`` when given, else the VM's name with
    pillar ``pairvm:guest_domain`` appended when it is set; checked.

    Example:

    .. code-block:: python

        images.guest_hostname("web1", None, {"guest_domain": "example.org"})  # web1.example.org
    """
    if hostname is None:
        domain = (pairvm_pillar or {}).get("guest_domain")
        if domain is not None:
            try:
                domain = validate_hostname(domain)
            except Invalid as exc:
                raise Invalid(f"guest_domain: {exc}".replace("hostname: ", "")) from None
        hostname = f"{vm}.{domain}" if domain else vm
    return validate_hostname(hostname)


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


