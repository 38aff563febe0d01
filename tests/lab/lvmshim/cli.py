"""Entry point of every LVM shim in tests/lab/shims: ``main(cmd, args)``.

Each shimmed command runs the REAL lvm2 command with the caller's argv
first; only when it succeeded does the device side follow (see core.sync).
Exit codes, stdout and error texts are real LVM's; stderr loses only the
warnings real LVM prints because activation is off in the lab.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys

from . import core
from .argv import parse

ECMD_FAILED = 5
NO_DM_SNAPSHOT = "Can't create snapshot without using device-mapper kernel driver."
_REDUCED_COW = re.compile(
    r"Reducing COW size .* down to maximum usable size ([0-9.]+) ([KMGTPE])iB\."
)


def main(cmd, args):
    host = core.Host()
    if not host.enabled:
        # Not inside a lab host: behave exactly like the real command.
        os.execv(core.real(cmd), [cmd, *args])
    handler = HANDLERS.get(cmd, _generic)
    try:
        return handler(host, cmd, args)
    except core.ShimError as exc:
        core.say(str(exc))
        return ECMD_FAILED
    except Exception as exc:  # a shim bug must still read like a failed command
        core.say(f"internal error: {type(exc).__name__}: {exc}")
        return ECMD_FAILED


def _emit(proc):
    if proc.stdout:
        sys.stdout.write(proc.stdout)
        sys.stdout.flush()
    if proc.stderr:
        sys.stderr.write(proc.stderr)
        sys.stderr.flush()


def _sync(host, **kwargs):
    core.sync(host, **kwargs)
    return 0


def _generic(host, cmd, args):
    """lvextend, lvresize, lvrename: real command, then follow the metadata."""
    with host.locked():
        proc = core.passthrough(cmd, args)
        if proc.returncode != 0:
            return proc.returncode
        return _sync(host)


def _in_use(host, targets):
    """LVM's refusal for an LV whose device is open (real LVM checks dm's open count)."""
    loops = core.loop_map()
    devs = [loops.get(host.data_path(lv.vg, lv.name), []) for lv in targets]
    busy = core.opened([d for ds in devs for d in ds])
    for lv, lv_devs in zip(targets, devs, strict=True):
        if busy.intersection(lv_devs):
            sys.stderr.write(f"  Logical volume {lv.vg}/{lv.name} in use.\n")
            return True
    return False


def _with_snapshots(targets):
    """Targets plus the emulated snapshots of those that are origins."""
    vgs = {t.vg for t in targets}
    if not vgs:
        return targets
    every = core.resolve(sorted(vgs)) or []
    names = {(t.vg, t.name) for t in targets}
    return targets + [lv for lv in every if lv.origin and (lv.vg, lv.origin) in names]


def lvremove(host, cmd, args):
    parsed = parse("lvremove", args)
    with host.locked():
        if not parsed.has("test") and (parsed.positionals or parsed.has("select")):
            targets = core.resolve(parsed.positionals, parsed.last("select"))
            if targets and _in_use(host, _with_snapshots(targets)):
                return ECMD_FAILED
        proc = core.passthrough(cmd, args)
        if proc.returncode != 0:
            return proc.returncode
        return _sync(host)


def lvchange(host, cmd, args):
    parsed = parse("lvchange", args)
    value = parsed.last("activate")
    with host.locked():
        request = {}
        if value is not None and not parsed.has("test"):
            want = value.endswith("y")
            targets = core.resolve(parsed.positionals, parsed.last("select")) or []
            if not want and _in_use(host, targets):
                return ECMD_FAILED
            request = {lv.uuid: want for lv in targets}
        proc = core.passthrough(cmd, args)
        if proc.returncode != 0:
            return proc.returncode
        return _sync(host, activate_req=request)


def lvcreate(host, cmd, args):
    parsed = parse("lvcreate", args)
    new_active = not (parsed.last("activate") or "y").endswith("n")
    with host.locked():
        proc = core.run_real(cmd, args)
        if proc.returncode == 0:
            _emit(proc)
            return _sync(host, new_active=new_active)
        snapshot = parsed.has("snapshot") or parsed.last("type") == "snapshot"
        if not (snapshot and NO_DM_SNAPSHOT in proc.stderr and parsed.positionals):
            _emit(proc)
            return proc.returncode
        return _snapshot(host, parsed, proc, new_active)


def _snapshot(host, parsed, first, new_active):
    """Emulate ``lvcreate --snapshot``: real LVM validated it and then gave up
    only for want of device-mapper. Create a plain LV of the COW size tagged
    ``pvlab_snapshot_of=ORIGIN`` and copy the origin's data into it."""
    origin_arg = parsed.positionals[0]
    found = core.resolve([origin_arg])
    if not found:
        _emit(first)
        return first.returncode
    origin = found[0]
    if origin.origin:
        sys.stderr.write("  Snapshots of snapshots are not supported.\n")
        return ECMD_FAILED
    # What real LVM said before giving up ("Reducing COW size ...", on
    # stdout) is part of its answer; "TEST MODE" comes again from the 2nd run.
    info_out = "".join(line for line in first.stdout.splitlines(keepends=True)
                       if "TEST MODE" not in line)
    info_err = "".join(line for line in first.stderr.splitlines(keepends=True)
                       if NO_DM_SNAPSHOT not in line and "TEST MODE" not in line)
    reduced = _REDUCED_COW.search(first.stdout + first.stderr)
    argv = []
    placed_origin = False
    for kind, name, value, tokens in parsed.items:
        if kind == "pos":
            if not placed_origin:
                argv.append(origin.vg)
                placed_origin = True
            else:
                argv.append(value)  # PVs to allocate the COW space from
        elif (name == "snapshot" or (name == "type" and value == "snapshot")
              or (reduced and name in ("size", "extents"))):
            continue  # a plain LV; the size LVM reduced to is appended below
        elif name == "extents" and value.upper().endswith("%ORIGIN"):
            pct = float(value[: -len("%ORIGIN")])
            extents = math.ceil(origin.size // origin.extent_size * pct / 100)
            argv += ["--extents", str(max(extents, 1))]
        else:
            argv += tokens
    if reduced:
        argv += ["--size", f"{reduced.group(1)}{reduced.group(2).lower()}"]
    argv += ["--addtag", core.SNAPSHOT_TAG + origin.name]
    second = core.run_real("lvcreate", argv)
    if second.returncode != 0:
        _emit(second)
        return second.returncode
    sys.stdout.write(info_out)
    sys.stderr.write(info_err)
    _emit(second)
    return _sync(host, snapshot_of=(origin.vg, origin.name), new_active=new_active)


# --- lvs: JSON reports tell what real LVM would of the shim's devices ------

def lvs(host, cmd, args):
    if not _wants_json(args):
        return core.passthrough(cmd, args).returncode
    proc = core.run_real(cmd, args)
    out = proc.stdout
    if proc.returncode == 0 or out.strip():
        try:
            out = rewrite_report(host, out)
        except (OSError, ValueError) as exc:  # never lose the real report
            core.say(f"report left as LVM printed it: {exc}")
    sys.stdout.write(out)
    sys.stdout.flush()
    if proc.stderr:
        sys.stderr.write(proc.stderr)
    return proc.returncode


def _wants_json(args):
    for i, word in enumerate(args):
        if word == "--reportformat" and i + 1 < len(args):
            if args[i + 1] == "json":
                return True
        elif word == "--reportformat=json":
            return True
    return False


def rewrite_report(host, text):
    """Fix, row by row, the fields that activation=0 and emulated snapshots
    leave wrong, keeping LVM's layout (one row per line)."""
    state = host.load_state() or {}
    by_name = {(r["vg"], r["lv"]): dict(r, uuid=u) for u, r in state.items()}
    by_uuid = {u: by_name[(r["vg"], r["lv"])] for u, r in state.items()}
    origins = {(r["vg"], r["origin"]) for r in state.values() if r.get("origin")}
    loops = core.loop_map()
    opened = None

    def is_open(dev):
        nonlocal opened
        if opened is None:
            opened = _opened_loops()
        return dev in opened

    lines = text.split("\n")
    for i, line in enumerate(lines):
        bare = line.strip()
        if not bare.startswith('{"'):
            continue
        comma = bare.endswith(",")
        try:
            row = json.loads(bare[:-1] if comma else bare)
        except ValueError:
            continue
        rec = _row_record(row, by_name, by_uuid)
        if rec is None:
            continue
        path = host.data_path(rec["vg"], rec["lv"])
        dev = core._linked_loop(rec["vg"], rec["lv"])
        if dev not in loops.get(path, []):
            dev = None
        _fix_row(row, rec, (rec["vg"], rec["lv"]) in origins, dev, is_open)
        indent = line[: len(line) - len(line.lstrip())]
        lines[i] = indent + json.dumps(row, separators=(", ", ":"), ensure_ascii=False) + (
            "," if comma else "")
    return "\n".join(lines)


def _row_record(row, by_name, by_uuid):
    if "lv_uuid" in row:
        return by_uuid.get(row["lv_uuid"])
    if "lv_full_name" in row:
        vg, _, lv = row["lv_full_name"].partition("/")
        return by_name.get((vg, lv))
    if "vg_name" in row and "lv_name" in row:
        return by_name.get((row["vg_name"], row["lv_name"]))
    if "lv_name" in row:  # no VG in the report: only an unambiguous name
        hits = [r for (_vg, lv), r in by_name.items() if lv == row["lv_name"]]
        return hits[0] if len(hits) == 1 else None
    return None


def _opened_loops():
    return core.opened([f"/dev/{n}" for n in os.listdir("/sys/block") if n.startswith("loop")])


def _fix_row(row, rec, is_origin, dev, is_open):
    snap = rec.get("origin")
    active = dev is not None
    if "lv_attr" in row and len(row["lv_attr"]) >= 7:
        attr = list(row["lv_attr"])
        if snap:
            attr[0] = "s"
        elif is_origin and attr[0] == "-":
            attr[0] = "o"
        attr[4] = "a" if active else "-"
        attr[5] = "o" if active and is_open(dev) else "-"
        if snap or is_origin:
            attr[6] = "s"
        row["lv_attr"] = "".join(attr)
    if "lv_active" in row:
        row["lv_active"] = "active" if active else ""
    if "lv_device_open" in row:
        row["lv_device_open"] = "open" if active and is_open(dev) else ""
    if "lv_kernel_major" in row:
        row["lv_kernel_major"] = "7" if active else "-1"
    if "lv_kernel_minor" in row:
        row["lv_kernel_minor"] = dev[len("/dev/loop"):] if active else "-1"
    if "lv_tags" in row:
        row["lv_tags"] = ",".join(
            t for t in row["lv_tags"].split(",") if t and not t.startswith(core.SNAPSHOT_TAG))
    if snap:
        if "origin" in row:
            row["origin"] = snap
        for key in ("snap_percent", "data_percent"):
            if key in row:
                row[key] = "0.00"
        if "lv_role" in row:
            row["lv_role"] = "public,snapshot,thicksnapshot"
        if "lv_snapshot_invalid" in row:
            row["lv_snapshot_invalid"] = ""
    elif is_origin and "lv_role" in row:
        row["lv_role"] = "public,origin,thickorigin"


HANDLERS = {
    "lvcreate": lvcreate,
    "lvremove": lvremove,
    "lvchange": lvchange,
    "lvs": lvs,
}
