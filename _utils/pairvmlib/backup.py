"""Backups: the pure pieces (no I/O): which host backs a VM up, the argv of
each pipeline stage, the fixed scripts run on the backup host, DRBD sizes.

The backup host only needs a POSIX shell, cat, tee, mv, rm, mkdir, wc, od
and sha256sum (or openssl).
Each remote script is a constant: the path it works on arrives as the first
line of its standard input and is only ever used as a quoted variable, so
the remote shell never interprets it, and nothing the operator typed is
put into a command line there.

A backup uses ONE ssh connection: its own session (the control master) runs
UPLOAD, and COMMIT runs beside it (``ssh_argv(..., control=...)``). UPLOAD
says ``ready`` once PATH.partial exists, before the snapshot is taken, so an
unreachable host, a refused key or an unwritable directory fail at once.
"""

import re

from pairvmlib import checks, defaults
from pairvmlib.errors import Invalid

# Remote scripts (constants). The first stdin line is the path. SHA256 is
# OpenSSL's when the backup host has it (several times faster than
# coreutils' sha256sum where the CPU has SHA instructions), else sha256sum;
# both print the digest first.
_SHA256 = 'sha() { if command -v openssl >/dev/null; then openssl dgst -sha256 -r; else sha256sum; fi; }; '

# UPLOAD: makes PATH.partial (refusing a PATH that is a directory) and says
# "ready"; then the rest of stdin goes to PATH.partial, hashed as it arrives
# (tee; when tee cannot write the file, the hash is spoilt on purpose, so
# that it cannot match); prints its sha256 and size.
UPLOAD = (
    'set -eu; ' + _SHA256 + 'IFS= read -r dest; part="$dest.partial"; dir=${dest%/*}; '
    'if [ -d "$dest" ]; then printf "%s: Is a directory\\n" "$dest" >&2; exit 1; fi; '
    '[ -z "$dir" ] || mkdir -p -- "$dir"; : > "$part"; echo ready; '
    'sum=$({ tee -- "$part" || echo "tee failed"; } | sha); [ -f "$part" ]; '
    'echo "${sum%% *} $(wc -c < "$part")"'
)
# COMMIT: runs from the start of the backup and waits for its second line:
# the checksum both sides agreed on (then PATH.sha256 is written and
# PATH.partial becomes PATH), or anything else, or the end of its input
# (the backup failed, or pairvm was killed): PATH.partial is removed.
COMMIT = (
    'set -eu; IFS= read -r dest; part="$dest.partial"; '
    'if IFS= read -r sum && [ "${#sum}" -eq 64 ]; then [ -f "$part" ]; '
    'printf "%s  %s\\n" "$sum" "${dest##*/}" > "$dest.sha256.partial"; '
    'mv -f -- "$dest.sha256.partial" "$dest.sha256"; mv -f -- "$part" "$dest"; echo committed; '
    'else rm -f -- "$part"; echo aborted; fi'
)
# ABORT: removes PATH.partial, through a new connection when the backup's was lost.
ABORT = 'IFS= read -r dest; rm -f -- "$dest.partial"'
# FETCH: the second stdin line is "check" (hash the file there first) or
# "stat". Prints one line: the stored checksum (first word of PATH.sha256),
# the size, the file's actual sha256 ("-" unless checked) and its first 4
# bytes in hex; then, unless the check failed, the file itself.
FETCH = (
    'set -eu; ' + _SHA256 + 'IFS= read -r src; IFS= read -r mode; read -r want rest < "$src.sha256"; '
    'actual=-; if [ "$mode" = check ]; then actual=$(sha < "$src"); actual=${actual%% *}; fi; '
    'echo "$want $(wc -c < "$src") $actual" $(od -A n -t x1 -N 4 < "$src"); '
    '[ "$actual" = - ] || [ "$actual" = "$want" ] || exit 0; exec cat -- "$src"'
)
# The local side's sha256 of a stream (the digest first).
HASH = ["openssl", "dgst", "-sha256", "-r"]
# Every process of a transfer dies with pairvm (a SIGKILLed salt-call too), so
# a killed backup leaves no process reading the snapshot.
WITH_PAIRVM = ["setpriv", "--pdeathsig", "KILL", "--"]

COMPRESSORS = {
    "gzip": {"compress": ["pigz", "-c"], "decompress": ["pigz", "-dc"], "magic": b"\x1f\x8b"},
    "zstd": {"compress": ["zstd", "-c", "-q", "-T0", "-3"], "decompress": ["zstd", "-dc", "-q"],
             "magic": b"\x28\xb5\x2f\xfd"},
}
SNAPSHOT_SUFFIX = "-backup"
COMPRESSIONS = tuple(COMPRESSORS)
_SSH_USER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")
_SSH_HOST_RE = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\]"
)
_CRON_FIELD_RE = re.compile(r"[0-9*/,-]+")
_SUM_RE = re.compile(r"[0-9a-f]{64}")


SCRIPTS = {"upload": UPLOAD, "commit": COMMIT, "abort": ABORT, "fetch": FETCH}


def snapshot_name(name):
    """The LV name of VM ``name``'s backup snapshot."""
    return f"{name}{SNAPSHOT_SUFFIX}"


def ssh_argv(dest, settings, script, control=None, master=False):
    """
    The ssh argv that runs the constant script ``script`` (a key of SCRIPTS) as ``dest["user"]`` on
    ``dest["host"]``: batch mode (never a prompt), the configured key only,
    known host keys only. With ``control`` (a socket path) it is the
    connection's control ``master``, or a session through that master.

    Example:

    .. code-block:: python

        backup.ssh_argv(dest, settings["backup"], "upload")
    """
    host = dest["host"].strip("[]")
    shared = []
    if control:
        shared = ["-o", f"ControlPath={control}", "-o", f"ControlMaster={'yes' if master else 'no'}",
                  "-o", "ControlPersist=no"]
    return [
        "ssh", "-T", *shared, "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i", settings["key"],
        "-o", f"UserKnownHostsFile={settings['known_hosts']}", "-o", "StrictHostKeyChecking=yes",
        "-o", "ConnectTimeout=15", "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4",
        "-p", str(settings["port"]), "-l", dest["user"], "--", host, SCRIPTS[script],
    ]


def reader_argv(device, size, speed):
    """pv reading ``size`` bytes of ``device`` at no more than ``speed`` KiB/s (0: no limit),
    printing the byte count once a second on stderr."""
    limit = ["-L", f"{speed}k"] if speed else []
    return ["pv", "-f", "-n", "-b", "-i", "1", "-S", "-s", str(size), *limit, device]


def compressor(name):
    """{"compress": argv, "decompress": argv, "magic": bytes} of gzip (pigz) or zstd."""
    return COMPRESSORS[name]


def detect_compression(head):
    """'gzip' or 'zstd' from a stream's first bytes, else None."""
    for name, tool in COMPRESSORS.items():
        if head.startswith(tool["magic"]):
            return name
    return None


def drbd_data_bytes(lv_bytes):
    """Bytes of a DRBD 8.4 device with internal meta data on an LV of ``lv_bytes``:
    the data area before the bitmap, activity log and super block
    (drbd_md_set_sector_offsets with the default 32 KiB activity log)."""
    sectors = lv_bytes // 512
    bitmap = ((sectors + 32767) & ~32767) >> 15
    md_sectors = ((bitmap + 7) & ~7) + 8 + 64
    return max((sectors & ~7) - md_sectors, 0) * 512


def snapshot_size_kwarg(size):
    """The size of a snapshot as a keyword of Salt's lvm.lvcreate:
    '20%' -> {'extents': '20%ORIGIN'} (lvcreate -l), '1G' -> {'size': '1G'} (-L)."""
    if str(size).endswith("%"):
        return {"extents": f"{size}ORIGIN"}
    return {"size": str(size)}


def eligible(record, me, running_here, drbd, on_running_host=False):
    """
    Why this host must not back VM ``record`` up now, or None when it may.

    The backup is made on the host that is NOT running the VM (its disc
    there is the replica): a VM running here needs ``on_running_host``. A VM
    running nowhere is backed up by its home host only, so the pair makes one
    copy. The disc here must be UpToDate.

    Example:

    .. code-block:: python

        backup.eligible(record, "hostB", False, drbd_status["vm1"])
    """
    if running_here and not on_running_host:
        return "it runs on this host; back it up on the peer, or pass on_running_host=True"
    if not drbd:
        return "its DRBD resource is not up on this host"
    if drbd.get("disk") != "UpToDate":
        return f"its disc here is {drbd.get('disk')}, not UpToDate"
    peer_runs = drbd.get("peer_role") == "Primary"
    if not running_here and not peer_runs and record["home"] != me:
        return f"it runs nowhere; its home host {record['home']} backs it up"
    return None


def shares(pair, views, names=None):
    """
    Which host of ``pair`` backs each VM up, from both hosts' ``pairvm.list``
    rows (``views``: ``{host: {"vms": [{"name", "running", "location"}]}}``):
    the host NOT running it; a VM running nowhere, its home host. Returns
    ``({host: [vm, ...]}, {vm: why no host can})``; ``names`` None: every
    VM of the pair.

    Example:

    .. code-block:: python

        backup.shares(["hostA", "hostB"], {h: salt[h]["pairvm.list"]() for h in pair}, ["vm1"])
    """
    rows = {host: {row["name"]: row for row in views[host]["vms"]} for host in pair}
    names = sorted(set().union(*rows.values())) if names is None else names
    plan, problems = {host: [] for host in pair}, {}
    for name in names:
        known = {host: rows[host][name] for host in pair if name in rows[host]}
        running = [host for host, row in known.items() if row["running"]]
        home = [host for host, row in known.items() if row["location"] == "home"]
        if not known:
            problems[name] = "no host of the pair knows it"
        elif len(known) < len(pair):
            problems[name] = f"only {', '.join(known)} knows it (is the pair in sync? salt-run pairvm.verify)"
        elif len(running) > 1:
            problems[name] = f"it runs on {' and '.join(running)} (salt-run pairvm.verify)"
        elif running:
            plan[next(host for host in pair if host != running[0])].append(name)
        elif len(home) == 1:
            plan[home[0]].append(name)
        else:
            problems[name] = "the hosts disagree on its home host (salt-run pairvm.verify)"
    return plan, problems


def check_one_each(destination, names):
    """Several VMs (``names``, or ``all``) to one ``destination``: it must hold ``_NAME``,
    or each backup would replace the one before."""
    if (names == "all" or len(names) > 1) and "_NAME" not in str(destination):
        what = "all" if names == "all" else ", ".join(names)
        raise Invalid(f"destination: {destination!r} must contain _NAME (the VM's name) when several VMs "
                      f"are backed up ({what}): each would replace the one before")


def parse_remote_sum(text):
    """The 'SUM SIZE' line UPLOAD printed -> (sum, size)."""
    words = text.split()
    if len(words) != 2 or not _SUM_RE.fullmatch(words[0]) or not words[1].isdigit():
        raise ValueError(f"unexpected answer from the backup host: {text.strip()!r}")
    return words[0], int(words[1])


def parse_fetched(text):
    """FETCH's first line -> {"stored": sha256 of PATH.sha256, "size", "actual": sha256
    or None, "compression": 'gzip', 'zstd' or None}."""
    words = text.split()
    if (len(words) < 3 or not _SUM_RE.fullmatch(words[0]) or not words[1].isdigit()
            or not (words[2] == "-" or _SUM_RE.fullmatch(words[2]))
            or not all(re.fullmatch(r"[0-9a-f]{2}", w) for w in words[3:7])):
        raise ValueError(f"unexpected answer from the backup host: {text.strip()!r}")
    return {"stored": words[0], "size": int(words[1]), "actual": None if words[2] == "-" else words[2],
            "compression": detect_compression(bytes.fromhex("".join(words[3:7])))}


# --- destinations and settings -------------------------------------------------------------


def _destination(value, name=None):
    """``user@host:/path`` (``_NAME`` -> name) -> {user, host, path}; see parse_destination."""
    if not isinstance(value, str):
        raise Invalid(f"must be user@host:/path, got {value!r}")
    text = value.replace("_NAME", name) if name else value
    user, at, rest = text.partition("@")
    host, colon, path = rest.partition(":") if not rest.startswith("[") else _bracketed(rest)
    if not (at and colon):
        raise Invalid(f"must be user@host:/path, got {value!r}")
    if not _SSH_USER_RE.fullmatch(user):
        raise Invalid(f"{value!r}: the user {user!r} must be letters, digits, '_', '.' or '-' "
                       f"and must not start with '-'")
    if not _SSH_HOST_RE.fullmatch(host):
        raise Invalid(f"{value!r}: the host {host!r} must be a host name or an address "
                       f"(no '-' first, no whitespace or shell characters)")
    if not path.startswith("/"):
        raise Invalid(f"{value!r}: the path {path!r} must be absolute")
    if path.endswith("/") or ".." in path.split("/") or checks.NOT_TEXT_RE.search(path) or len(path) > 4096:
        raise Invalid(f"{value!r}: the path {path!r} must name a file, without '..' or control characters")
    return {"user": user, "host": host, "path": path}


def _bracketed(rest):
    """'[::1]:/path' -> ('[::1]', ':', '/path')."""
    end = rest.find("]")
    if end < 0:
        return rest, "", ""
    return rest[: end + 1], rest[end + 1: end + 2], rest[end + 2:]


def _speed(value):
    return checks.whole(value, 0, 2**31, "a whole number of KiB/s (0: no limit)")


def _snapshot_size(value):
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,3}%", value) and 0 < int(value[:-1]) <= 100:
        return value
    checks.size_mib(value, 4)
    return value


def _cron(value):
    fields = value.split() if isinstance(value, str) else []
    if len(fields) != 5 or not all(_CRON_FIELD_RE.fullmatch(f) for f in fields):
        raise Invalid(f"must be five cron fields like '30 2 * * *' (minute hour day month weekday), "
                       f"got {value!r}")
    return " ".join(fields)


def parse_destination(value, name=None):
    """
    Parse a backup destination ``user@host:/path``; ``_NAME`` becomes ``name``.

    Refuses a user or host that starts with ``-`` or holds whitespace or shell
    characters, a relative path, ``..`` and control characters. Returns
    ``{"user", "host", "path"}``; raises ``Invalid`` naming what is wrong.

    Example:

    .. code-block:: python

        backup.parse_destination("bk@store:/backup/_NAME.gz", "vm1")
    """
    errors = []
    result = checks.gather(errors, "destination: ", _destination, value, name)
    checks.raise_all(errors)
    return result


_SETTING_CHECKS = {
    "key": (checks.abs_path,), "known_hosts": (checks.abs_path,),
    "port": (checks.whole, 1, 65535, "a TCP port"), "speed": (_speed,),
    "compress": (checks.choice, COMPRESSIONS), "snapshot_size": (_snapshot_size,),
}
_JOB_KEYS = ("vms", "destination", "cron", "speed", "compress")


def settings_problems(raw, errors):
    """pillar ``pairvm:backup`` (SSH key, known_hosts, port, speed, compress,
    snapshot_size, schedule) with its defaults; its problems are noted in ``errors``."""
    raw = checks.mapping(raw, "backup", errors)
    checks.unknown(raw, tuple(defaults.BACKUP), "backup", errors)
    result = {
        key: checks.gather(errors, f"backup.{key}: ", check[0],
                           checks.given(raw, key, defaults.BACKUP[key]), *check[1:])
        for key, check in _SETTING_CHECKS.items()
    }
    schedule = checks.mapping(raw.get("schedule"), "backup.schedule", errors)
    result["schedule"] = {job: _job(job, definition, result, errors)
                          for job, definition in sorted(schedule.items())}
    return result


def settings(raw):
    """
    Validate pillar ``pairvm:backup`` alone and fill its defaults (``defaults.BACKUP``).

    Example:

    .. code-block:: python

        backup.settings(__pillar__["pairvm"].get("backup"))
    """
    errors = []
    result = settings_problems(raw, errors)
    checks.raise_all(errors)
    return result


def _job(job, raw, fallback, errors):
    """One job of ``backup.schedule``; ``fallback`` holds the speed and compression of ``backup``."""
    prefix = f"backup.schedule.{job}: "
    checks.gather(errors, prefix, checks.token, job)
    raw = checks.mapping(raw, prefix.rstrip(": "), errors)
    checks.unknown(raw, _JOB_KEYS, prefix.rstrip(": "), errors)
    vms = checks.given(raw, "vms", "all")
    if vms != "all":
        vms = [checks.gather(errors, f"{prefix}vms: ", checks.vm_name, v) for v in vms] \
            if isinstance(vms, list) else None
        if not vms:
            errors.append(f"{prefix}vms: must be 'all' or a list of VM names, got {raw.get('vms')!r}")
    destination = checks.gather(errors, f"{prefix}destination: ",
                                lambda v: checks.required(v, _destination) and v, raw.get("destination"))
    if destination and vms:
        checks.gather(errors, prefix, check_one_each, destination, vms)
    return {
        "vms": vms,
        "destination": destination,
        "cron": checks.gather(errors, f"{prefix}cron: ", lambda v: checks.required(v, _cron),
                              raw.get("cron")),
        "speed": checks.gather(errors, f"{prefix}speed: ", _speed,
                               checks.given(raw, "speed", fallback["speed"])),
        "compress": checks.gather(errors, f"{prefix}compress: ", checks.choice,
                                  checks.given(raw, "compress", fallback["compress"]), COMPRESSIONS),
    }


def with_job_names(settings):
    """``settings`` with each schedule job as the keyword arguments of ``pairvm.backup``
    plus its cron: ``{id: {name, destination, speed, compress, cron}}`` (``name``:
    ``all`` or a comma-separated list of VMs), what the state ``pairvm.host.backup``
    turns into jobs of the minion's scheduler."""
    jobs = {
        job_id: {"name": job["vms"] if job["vms"] == "all" else ",".join(job["vms"]),
                 "destination": job["destination"], "speed": job["speed"],
                 "compress": job["compress"], "cron": job["cron"]}
        for job_id, job in settings["schedule"].items()
    }
    return dict(settings, schedule=jobs)
