"""drbdsetup option metadata, read from the real ``drbdsetup-84 xml-help``.

Used to normalise option values the way the kernel stores them and to leave
defaults out of ``show`` output, as the real tool does.
"""

import json
import os
import re
import subprocess

from . import state

REAL = "/lib/drbd/drbdsetup-84"
HANDLER_DEFAULTS = {
    "protocol": "C", "after-sb-0pri": "disconnect", "after-sb-1pri": "disconnect",
    "after-sb-2pri": "disconnect", "rr-conflict": "disconnect", "on-congestion": "block",
    "on-io-error": "detach", "fencing": "dont-care", "on-no-data-accessible": "io-error",
    "read-balancing": "prefer-local",
}
UNIT = {"1": 1, "s": 512, "k": 1024, "m": 1 << 20, "g": 1 << 30}
_cache = {}


def fields(cmd):
    """[(name, {type, default, unit_prefix, unit})] in the tool's order."""
    if cmd in _cache:
        return _cache[cmd]
    path = os.path.join(state.data_dir(), "xml-help", f"{cmd}.cache")
    try:
        with open(path, encoding="utf-8") as fh:
            out = [tuple(x) for x in json.load(fh)]
    except (OSError, ValueError):
        xml = subprocess.run([REAL, "xml-help", cmd], capture_output=True, text=True,
                             check=False).stdout
        out = []
        for m in re.finditer(r'<option name="([^"]+)" type="([^"]+)">(.*?)</option>', xml, re.S):
            body = m.group(3)
            meta = {"type": m.group(2)}
            for tag in ("default", "unit_prefix", "unit"):
                t = re.search(rf"<{tag}>([^<]*)</{tag}>", body)
                if t:
                    meta[tag] = t.group(1)
            if m.group(2) == "handler" and m.group(1) in HANDLER_DEFAULTS:
                meta["default"] = HANDLER_DEFAULTS[m.group(1)]
            out.append((m.group(1), meta))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(out, fh)
    _cache[cmd] = out
    return out


def normalise(cmd, name, value):
    meta = dict(fields(cmd)).get(name)
    if meta is None:
        return value
    if meta["type"] == "boolean":
        return "no" if value in ("no", "false", "0") else "yes"
    if meta["type"] == "numeric":
        m = re.fullmatch(r"(-?\d+)([sSkKmMgG]?)", value)
        if not m:
            return value
        base = UNIT.get(meta.get("unit_prefix", "1"), 1)
        n = int(m.group(1))
        if m.group(2):
            n = n * UNIT[m.group(2).lower()] // base
        return str(n)
    return value


def show_lines(cmd, values, show_defaults=False):
    """'name\\tvalue; # unit' lines in the order drbdsetup prints them."""
    lines = []
    for name, meta in fields(cmd):
        if name == "set-defaults":
            continue
        default = meta.get("default")
        if name in values:
            val = values[name]
        elif show_defaults and default is not None:
            val = default
        else:
            continue
        is_default = default is not None and val == default
        if is_default and not show_defaults:
            continue
        if name in ("shared-secret", "cram-hmac-alg", "cpu-mask"):
            val = f'"{val}"'
        line = f"{name:<16}\t{val};"
        if meta.get("unit") or is_default:
            line += " # " + ", ".join(x for x in (meta.get("unit"), "default" if is_default else None) if x)
        lines.append(line)
    return lines
