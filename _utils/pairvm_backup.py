"""Backups: the pure pieces (no I/O): which host backs a VM up, the argv of
each pipeline stage, the fixed scripts run on the backup host, DRBD sizes.

The backup host only needs a POSIX shell, cat, tee, mv, rm, mkdir, wc and
sha256sum (or openssl).
Each remote script is a constant: the path it works on arrives as the first
line of its standard input and is only ever used as a quoted variable, so
the remote shell never interprets it, and nothing the operator typed is
put into a command line there.
"""

import re

# Remote scripts (constants). The first stdin line is the path. SHA256 is
# OpenSSL's when the backup host has it (several times faster than
# coreutils' sha256sum where the CPU has SHA instructions), else sha256sum;
# both print the digest first.
_SHA256 = 'sha() { if command -v openssl >/dev/null; then openssl dgst -sha256 -r; else sha256sum; fi; }; '

# UPLOAD: the rest of stdin goes to PATH.partial, hashed as it arrives (tee);
# prints its sha256 and size. A file that cannot be created fails at once.
UPLOAD = (
    'set -eu; ' + _SHA256 + 'IFS= read -r dest; part="$dest.partial"; dir=${dest%/*}; '
    '[ -z "$dir" ] || mkdir -p -- "$dir"; : > "$part"; sum=$(tee -- "$part" | sha); [ -f "$part" ]; '
    'echo "${sum%% *} $(wc -c < "$part")"'
)
# COMMIT: second line = the checksum both sides agreed on: PATH.sha256 is
# written, then PATH.partial becomes PATH.
COMMIT = (
    'set -eu; IFS= read -r dest; IFS= read -r sum; part="$dest.partial"; [ -f "$part" ]; '
    'printf "%s  %s\\n" "$sum" "${dest##*/}" > "$dest.sha256.partial"; '
    'mv -f -- "$dest.sha256.partial" "$dest.sha256"; mv -f -- "$part" "$dest"'
)
ABORT = 'IFS= read -r dest; rm -f -- "$dest.partial"'
# STAT: the stored checksum (first word of PATH.sha256), the file's size.
STAT = (
    'set -eu; IFS= read -r src; read -r want rest < "$src.sha256"; '
    'echo "$want $(wc -c < "$src")"'
)
# CHECK: STAT plus the file's actual sha256 (reads the whole file there).
CHECK = (
    'set -eu; ' + _SHA256 + 'IFS= read -r src; read -r want rest < "$src.sha256"; '
    'sum=$(sha < "$src"); echo "$want $(wc -c < "$src") ${sum%% *}"'
)
READ = 'set -eu; IFS= read -r src; exec cat -- "$src"'

COMPRESSORS = {
    "gzip": {"compress": ["pigz", "-c"], "decompress": ["pigz", "-dc"], "magic": b"\x1f\x8b"},
    "zstd": {"compress": ["zstd", "-c", "-q", "-T0"], "decompress": ["zstd", "-dc", "-q"],
             "magic": b"\x28\xb5\x2f\xfd"},
}
SNAPSHOT_SUFFIX = "-backup"
_SUM_RE = re.compile(r"[0-9a-f]{64}")


SCRIPTS = {"upload": UPLOAD, "commit": COMMIT, "abort": ABORT, "stat": STAT, "check": CHECK, "read": READ}


def snapshot_name(name):
    """The LV name of VM ``name``'s backup snapshot."""
    return f"{name}{SNAPSHOT_SUFFIX}"


def ssh_argv(dest, settings, script):
    """
    The ssh argv that runs the constant script ``script`` (a key of SCRIPTS) as ``dest["user"]`` on
    ``dest["host"]``: batch mode (never a prompt), the configured key only,
    known host keys only.

    Example (utils are not on the Salt CLI; modules call them):

    .. code-block:: python

        __utils__["pairvm_backup.ssh_argv"](dest, settings["backup"], "upload")
    """
    host = dest["host"].strip("[]")
    return [
        "ssh", "-T", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i", settings["key"],
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

    Example (utils are not on the Salt CLI; modules call them):

    .. code-block:: python

        __utils__["pairvm_backup.eligible"](record, "hostB", False, drbd_status["vm1"])
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


def parse_remote_sum(text):
    """The 'SUM SIZE [SUM]' line a remote script printed -> (sum, size, [actual sum])."""
    words = text.split()
    if len(words) < 2 or not _SUM_RE.fullmatch(words[0]) or not words[1].isdigit():
        raise ValueError(f"unexpected answer from the backup host: {text.strip()!r}")
    return words[0], int(words[1]), *(words[2:3])
