"""``drbdsetup`` (8.4 API) for the lab: argv and output of the real tool,
state kept by the shim (see README.md).
"""

import contextlib
import json
import os
import sys
import time

from . import devices, kernel, options, state
from .state import conn_rank, disk_rank

# drbd_ret_code / drbd_state_rv values and texts of drbd-utils' v84 drbdsetup
ERR = {
    102: "Local address(port) already in use.",
    103: "Remote address(port) already in use.",
    119: "No valid meta-data signature found.\n\n"
         "\t==> Use 'drbdadm create-md res' to initialize meta-data area. <==\n",
    123: "--discard-my-data not allowed when primary.",
    124: "Device is attached to a disk (use detach first)",
    127: "Device minor not allocated",
    130: "Resize not allowed during resync.",
    131: "Need one Primary node to resize.",
    138: "Device does not have a disk-config",
    159: "Resource still in use (delete all minors first)",
    160: "Minor still configured (down it first)",
    161: "Minor or volume exists already (delete it first)",
    158: "Unknown resource",
    162: "Invalid configuration request",
}
SS = {
    -1: "Multiple primaries not allowed by config",
    -2: "Need access to UpToDate data",
    -11: "Device is diskless, the requested operation requires a disk",
    -12: "Device is held open by someone",
}

COMMANDS = (
    "primary secondary attach disk-options detach connect net-options disconnect resize "
    "resource-options new-current-uuid invalidate invalidate-remote pause-sync resume-sync "
    "suspend-io resume-io outdate verify down state role sh-status cstate dstate show-gi "
    "get-gi show status check-resize events events2 wait-connect wait-sync new-resource "
    "new-minor del-minor del-resource udev"
).split()


class Done(Exception):
    def __init__(self, rc):
        super().__init__(rc)
        self.rc = rc


def out(text=""):
    sys.stdout.write(text)


def err(text):
    sys.stderr.write(text)


def failure(objname, code, info=None):
    """print_config_error() for a drbd_ret_code (rc 10)."""
    err(f"{objname}: Failure: ({code}) {ERR[code]}\n")
    if info:
        err(f"additional info from kernel:\n{info}\n")
    raise Done(10)


def state_failed(objname, code, info=None):
    """print_config_error() for a drbd_state_rv (rc 11, 17 for -2)."""
    err(f"{objname}: State change failed: ({code}) {SS[code]}\n")
    if info:
        err(f"additional info from kernel:\n{info}\n")
    raise Done(17 if code == -2 else 11)


def unsupported(cmd):
    err(f"drbdsetup (pvlab DRBD shim): '{cmd}' is not simulated, see tests/lab/drbdshim/README.md\n")
    raise Done(20)


# --- locating objects ------------------------------------------------------------

def peek(name):
    try:
        with open(os.path.join(state.data_dir(), f"{name}.json"), encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def res_of_minor(minor):
    me = state.hostname()
    for name in state.all_names():
        st = peek(name)
        hs = st and st["hosts"].get(me)
        if hs and hs["minor"] == minor:
            return name
    return None


def res_of_addresses(local, peer):
    me = state.hostname()
    for name in state.all_names():
        st = peek(name)
        hs = st and st["hosts"].get(me)
        if hs and hs["net"] and hs["net"]["local"] == local and hs["net"]["peer"] == peer:
            return name
    return None


@contextlib.contextmanager
def resource(name, create=False):
    with state.locked(name) as box:
        if box["state"] is None and create:
            box["state"] = state.new_resource(name)
        st = box["state"]
        if st is not None:
            kernel.settle(st)
        yield st
        if st is not None:
            kernel.settle(st)


@contextlib.contextmanager
def minor_ctx(objname):
    try:
        minor = int(objname.removeprefix("/dev/drbd"))
    except ValueError:
        err(f"Cannot determine minor device number of device '{objname}'\n")
        raise Done(20) from None
    name = res_of_minor(minor)
    if name is None:
        failure(objname, 127, "unknown minor")
    with resource(name) as st:
        hs = st and st["hosts"].get(state.hostname())
        if not hs or hs["minor"] != minor:
            failure(objname, 127, "unknown minor")
        yield st, hs


# --- config commands -----------------------------------------------------------------

def cmd_new_resource(pos, opts):
    name = pos[0]
    with resource(name, create=True) as st:
        me = state.hostname()
        if me not in st["hosts"]:
            st["hosts"][me] = state.new_host()
        hs = st["hosts"][me]
        hs["res_opts"].update({k: options.normalise("resource-options", k, v)
                               for k, v in opts.items()})


def cmd_new_minor(pos, opts):
    name, minor, vol = pos[0], int(pos[1]), int(pos[2])
    if res_of_minor(minor) is not None:
        failure("??", 161)
    with resource(name) as st:
        hs = st and st["hosts"].get(state.hostname())
        if hs is None:
            failure("??", 162, "unknown resource")
        if hs["minor"] is not None:
            failure("??", 161)
        hs["minor"], hs["volume"], hs["mntns"] = minor, vol, devices.my_mntns()


def cmd_attach(pos, opts):
    objname, lower, _meta_dev, idx = pos[0], pos[1], pos[2], pos[3]
    try:
        fd = os.open(lower, os.O_RDWR)
        os.close(fd)
    except OSError as exc:
        err(f"Can not open device '{lower}': {exc.strerror}\n")
        raise Done(20) from None
    rdev = devices.bdev_rdev(lower)
    if rdev is None:
        err(f"{lower} is not a block device!\n")
        raise Done(20)
    if idx not in ("internal", "flexible") and idx != "-3":
        unsupported("external meta-data")
    with minor_ctx(objname) as (st, hs):
        if kernel.attached(hs):
            failure(objname, 124)
        cap = devices.capacity_sect(rdev)
        md = devices.read_md(rdev, cap)
        if md is None:
            failure(objname, 119)
        la, uuids, flags, _magic = md
        hs.update(backing=lower, backing_rdev=rdev, backing_sect=cap, meta=idx,
                  uuids=uuids, flags=flags)
        hs["disk_opts"].update({k: options.normalise("attach", k, v) for k, v in opts.items()})
        if flags & devices.MDF_CONSISTENT:
            disk = "Consistent" if flags & devices.MDF_WAS_UP_TO_DATE else "Outdated"
        else:
            disk = "Inconsistent"
        if disk == "Consistent":  # fencing dont-care
            disk = "UpToDate"
        m_size = devices.max_data_sect(cap)
        hs["size"] = min(la, m_size) if la else m_size
        hs["disk"] = disk
        hs["loop"] = None
        kernel.repoint(hs, rdev)
        if hs["conn"] == "StandAlone" and hs["net"]:
            hs["conn"] = "WFConnection"
        kernel.md_sync(st, state.hostname())


def cmd_connect(pos, opts):
    name, local, peer = pos[0], pos[1], pos[2]
    me = state.hostname()
    for other in state.all_names():
        o = peek(other)
        ohs = o and o["hosts"].get(me)
        if ohs and ohs["net"]:
            if ohs["net"]["local"] == local:
                failure(name, 102)
            if ohs["net"]["peer"] == peer:
                failure(name, 103)
    with resource(name) as st:
        hs = st and st["hosts"].get(me)
        if hs is None:
            failure(name, 158, "unknown resource")
        discard = opts.pop("discard-my-data", "no") != "no"
        opts.pop("tentative", None)
        opts.pop("dry-run", None)
        if discard and hs["role"] == "Primary":
            failure(name, 123)
        hs["net"] = {"local": local, "peer": peer,
                     "opts": {k: options.normalise("net-options", k, v) for k, v in opts.items()}}
        hs["discard_my_data"] = discard
        hs["conn"] = "WFConnection"


def cmd_disconnect(pos, opts):
    name = res_of_addresses(pos[0], pos[1])
    if name is None:
        failure("??", 162, "unknown connection")
    with resource(name) as st:
        hs = st["hosts"][state.hostname()]
        hs["net"], hs["conn"], hs["discard_my_data"] = None, "StandAlone", False


def cmd_net_options(pos, opts):
    name = res_of_addresses(pos[0], pos[1])
    if name is None:
        failure("??", 162, "unknown connection")
    with resource(name) as st:
        hs = st["hosts"][state.hostname()]
        if "set-defaults" in opts:
            hs["net"]["opts"] = {}
        hs["net"]["opts"].update({k: options.normalise("net-options", k, v)
                                  for k, v in opts.items() if k != "set-defaults"})


def cmd_disk_options(pos, opts):
    with minor_ctx(pos[0]) as (st, hs):
        if "set-defaults" in opts:
            hs["disk_opts"] = {}
        hs["disk_opts"].update({k: options.normalise("attach", k, v)
                                for k, v in opts.items() if k != "set-defaults"})


def cmd_resource_options(pos, opts):
    with resource(pos[0]) as st:
        hs = st and st["hosts"].get(state.hostname())
        if hs is None:
            failure(pos[0], 162, "unknown resource")
        if "set-defaults" in opts:
            hs["res_opts"] = {}
        hs["res_opts"].update({k: options.normalise("resource-options", k, v)
                               for k, v in opts.items() if k != "set-defaults"})


def _demote(st, hs, objname, info=None):
    if hs["role"] != "Primary":
        return
    if hs["loop"] is not None and devices.openers(hs["loop"]):
        state_failed(objname, -12, info)
    hs["role"] = "Secondary"
    devices.set_readonly(hs["loop"], True)
    kernel.md_sync(st, state.hostname())


def cmd_primary(pos, opts):
    objname = pos[0]
    force = opts.get("force", opts.get("overwrite-data-of-peer", "no")) != "no"
    me = state.hostname()
    with minor_ctx(objname) as (st, hs):
        if hs["role"] == "Primary":
            return
        peer = st["hosts"].get(kernel.peer_of(st, me) or "")
        conn = kernel.connected(st) and peer is not None
        if conn and peer["role"] == "Primary" and not kernel.two_primaries_allowed(hs):
            state_failed(objname, -1)
        if not kernel.attached(hs):
            unsupported("a diskless primary")
        forced = False
        inc = disk_rank("Inconsistent")
        if not conn and hs["disk"] != "UpToDate":
            if force and disk_rank(hs["disk"]) >= inc:
                forced = True
            else:
                state_failed(objname, -2)
        if conn and disk_rank(hs["disk"]) <= inc and disk_rank(peer["disk"]) <= inc:
            if force and disk_rank(hs["disk"]) >= inc:
                forced = True
            else:
                state_failed(objname, -2)
        hs["role"] = "Primary"
        if forced:
            hs["disk"] = "UpToDate"
        if forced or ((not conn or peer["disk"] == "Diskless") and hs["uuids"][1] == 0):
            kernel.new_current_uuid(hs)
        if conn and hs["map"] != peer["map"] and st["sync"] is None:
            kernel.share(st, kernel.peer_of(st, me), me)
        devices.set_readonly(hs["loop"], False)
        hs["discard_my_data"] = False
        if forced and conn and peer["disk"] == "Inconsistent":
            kernel.start_sync(st, me, kernel.peer_of(st, me), time.time())
        kernel.md_sync_all(st)


def cmd_secondary(pos, opts):
    with minor_ctx(pos[0]) as (st, hs):
        _demote(st, hs, pos[0])


def _detach(st, hs):
    me = state.hostname()
    kernel.md_sync(st, me, clean=True)
    if hs["loop"] is not None:
        devices.remove_node(hs["mntns"], hs["minor"])
        devices.loop_detach(hs["loop"])
    hs.update(loop=None, map=None, disk="Diskless", size=0)


def cmd_detach(pos, opts):
    with minor_ctx(pos[0]) as (st, hs):
        if hs["role"] == "Primary":
            state_failed(pos[0], -2)
        if hs["loop"] is not None and devices.openers(hs["loop"]):
            state_failed(pos[0], -12)
        if kernel.connected(st):
            kernel.split(st)
        _detach(st, hs)


def cmd_down(pos, opts):
    name = pos[0]
    me = state.hostname()
    with resource(name) as st:
        hs = st and st["hosts"].get(me)
        if hs is None:
            if sys.stderr.isatty():
                err("Resource unknown\n")
            return
        _demote(st, hs, name, "failed to demote")
        if hs["loop"] is not None and devices.openers(hs["loop"]):
            state_failed(name, -12, "failed to detach")
        hs["net"] = None
        kernel.settle(st)
        if kernel.attached(hs):
            _detach(st, hs)
        del st["hosts"][me]


def cmd_del_minor(pos, opts):
    with minor_ctx(pos[0]) as (st, hs):
        if kernel.attached(hs) or hs["net"]:
            failure(pos[0], 160)
        hs.update(minor=None, volume=None)


def cmd_del_resource(pos, opts):
    with resource(pos[0]) as st:
        hs = st and st["hosts"].get(state.hostname())
        if hs is None:
            return
        if hs["minor"] is not None:
            failure(pos[0], 159)
        del st["hosts"][state.hostname()]


def cmd_resize(pos, opts):
    objname = pos[0]
    me = state.hostname()
    with minor_ctx(objname) as (st, hs):
        if not kernel.attached(hs):
            failure(objname, 138)
        conn, role, peer_role, _d, _p = kernel.view(st, me)
        if conn_rank(conn) > conn_rank("Connected"):
            failure(objname, 130)
        if role == "Secondary" and peer_role == "Secondary":
            failure(objname, 131)
        hosts = [h for h in st["hosts"] if kernel.attached(st["hosts"][h])]
        if not kernel.connected(st):
            hosts = [me]
        for h in hosts:
            x = st["hosts"][h]
            cap = devices.capacity_sect(x["backing_rdev"])
            devices.move_md(x["backing_rdev"], x["backing_sect"], cap)
            x["backing_sect"] = cap
        limits = [devices.max_data_sect(st["hosts"][h]["backing_sect"]) for h in hosts]
        new = min(limits)
        if not kernel.connected(st) and opts.get("assume-peer-has-space", "no") == "no":
            new = min(new, hs["size"])
        if "size" in opts:
            new = min(new, int(options.normalise("resize", "size", opts["size"])))
        old = hs["size"]
        for h in hosts:
            x = st["hosts"][h]
            x["size"] = new
            devices.loop_set_size(x["loop"], new)
        if new > old and kernel.connected(st) and len(hosts) == 2 \
                and opts.get("assume-clean", "no") == "no":
            src = me if role == "Primary" else kernel.peer_of(st, me)
            kernel.start_sync(st, src, kernel.peer_of(st, src), time.time())
        kernel.md_sync_all(st)


def cmd_check_resize(pos, opts):
    with minor_ctx(pos[0]):
        pass


# --- queries -------------------------------------------------------------------------

def my_resources(objname):
    """[(name, state)] configured on this host, settled, sorted by name."""
    me = state.hostname()
    found = []
    for name in state.all_names():
        if objname not in ("all", name):
            continue
        with resource(name) as st:
            if st and me in st["hosts"]:
                found.append((name, json.loads(json.dumps(st))))
    return found


def conn_str9(c):
    return {"WFConnection": "Connecting"}.get(c, c)


def events(name, st, statistics=False):
    """8.4 events2 objects: [(key, {field: value})] in the kernel's order
    (resource, connection, device, peer-device). ``statistics`` adds the
    fields of ``--statistics`` in KiB: ``size`` (the data area) and
    ``out-of-sync`` (the part of a running resync not done yet, as
    ``status``'s ``done:``) are modelled; the shim moves no bytes through
    a network or an activity log, so the byte counters stay 0."""
    me = state.hostname()
    hs = st["hosts"][me]
    conn, role, peer_role, disk, pdsk = kernel.view(st, me)
    cname = " conn-name:peer" if hs["net"] else ""
    objs = [(f"resource name:{name}", {"role": role, "suspended": "no"}),
             (f"connection name:{name} peer-node-id:0{cname}",
              {"connection": "Connected" if conn_rank(conn) >= conn_rank("Connected")
               else conn_str9(conn), "role": peer_role})]
    if hs["minor"] is not None:
        # drbdsetup-84 on the 8.4 kernel: "Off" while not connected
        # (StandAlone, WFConnection), then Established or the resync state
        repl = ("Established" if conn == "Connected"
                else "Off" if conn_rank(conn) < conn_rank("Connected") else conn)
        dev = {"disk": disk}
        peer = {"replication": repl, "peer-disk": pdsk, "resync-suspended": "no"}
        if statistics:
            size = hs["size"] // 2
            left = 0
            if conn in ("SyncSource", "SyncTarget"):
                left = min(max((st["sync"] or {}).get("end", 0) - time.time(), 0) / kernel.SYNC_SECONDS, 1)
            dev.update({"size": size, "read": 0, "written": 0, "al-writes": 0, "bm-writes": 0,
                        "upper-pending": 0, "lower-pending": 0})
            peer.update({"received": 0, "sent": 0, "out-of-sync": int(size * left), "pending": 0,
                         "unacked": 0})
        objs.append((f"device name:{name} volume:{hs['volume']} minor:{hs['minor']}", dev))
        objs.append((f"peer-device name:{name} peer-node-id:0{cname} volume:{hs['volume']}", peer))
    return objs


def cmd_events2(pos, opts):
    objname = pos[0] if pos else "all"
    now_only = "now" in opts
    stamp = "timestamps" in opts
    stats = "statistics" in opts

    def prefix():
        if not stamp:
            return ""
        t = time.time()
        lt = time.localtime(t)
        off = lt.tm_gmtoff
        return (time.strftime("%Y-%m-%dT%H:%M:%S", lt) + f".{int(t % 1 * 1e6):06d}"
                + f"{int(off / 3600):+03d}:{abs(off) // 60 % 60:02d} ")

    known = {}
    for name, st in my_resources(objname):
        for key, fields in events(name, st, stats):
            known[key] = fields
            out(prefix() + "exists " + key + "".join(f" {k}:{v}" for k, v in fields.items()) + "\n")
    out(prefix() + "exists -\n")
    sys.stdout.flush()
    if now_only:
        return
    while True:  # events2 without --now follows changes until killed
        time.sleep(0.2)
        current = {}
        for name, st in my_resources(objname):
            for key, fields in events(name, st, stats):
                current[key] = fields
        for key in [k for k in known if k not in current]:
            out(prefix() + f"destroy {key}\n")
        for key, fields in current.items():
            old = known.get(key)
            changed = {k: v for k, v in fields.items() if old is None or old.get(k) != v}
            if changed:
                verb = "create" if old is None else "change"
                out(prefix() + f"{verb} {key}" + "".join(f" {k}:{v}" for k, v in changed.items()) + "\n")
        known = current
        sys.stdout.flush()


def cmd_status(pos, opts):
    objname = pos[0] if pos else "all"
    found = my_resources(objname)
    if not found and objname != "all":
        err(f"{objname}: No such resource\n")
        raise Done(10)
    me = state.hostname()
    for name, st in found:
        hs = st["hosts"][me]
        conn, role, peer_role, disk, pdsk = kernel.view(st, me)
        out(f"{name} role:{role}\n")
        if hs["minor"] is not None:
            out(f"  disk:{disk}\n")
        if conn_rank(conn) < conn_rank("WFReportParams"):
            out(f"  peer connection:{conn_str9(conn)}\n")
        else:
            out(f"  peer role:{peer_role}\n")
            if hs["minor"] is not None:
                line = "    replication:" + ("Established" if conn == "Connected" else conn)
                line += f" peer-disk:{pdsk}"
                if conn in ("SyncSource", "SyncTarget"):
                    sync = st["sync"] or {}
                    end = sync.get("start", 0) + kernel.SYNC_SECONDS
                    left = max(end - time.time(), 0) / kernel.SYNC_SECONDS
                    line += f" done:{100 * (1 - min(left, 1)):.2f}"
                out(line + "\n")
        out("\n")


def cmd_show(pos, opts):
    objname = pos[0] if pos else "all"
    defaults = "show-defaults" in opts
    me = state.hostname()
    first = True
    for name, st in my_resources(objname):
        hs = st["hosts"][me]
        if not first:
            out("\n")
        first = False
        out(f"resource {name} {{\n    options {{\n")
        for line in options.show_lines("resource-options", hs["res_opts"], defaults):
            out(f"        {line}\n")
        out("    }\n")
        if hs["net"]:
            out("    net {\n")
            for line in options.show_lines("net-options", hs["net"]["opts"], defaults):
                out(f"        {line}\n")
            out("    }\n")
            peer = hs["net"]["peer"].split(":", 1)
            local = hs["net"]["local"].split(":", 1)
            out(f"    _remote_host {{\n        address\t\t\t{peer[0]} {peer[1]};\n    }}\n")
            out(f"    _this_host {{\n        address\t\t\t{local[0]} {local[1]};\n")
        else:
            out("    _this_host {\n")
        if hs["minor"] is not None:
            out(f"        volume {hs['volume']} {{\n            device\t\t\tminor {hs['minor']};\n")
            if kernel.attached(hs):
                out(f'            disk\t\t\t"{hs["backing"]}";\n')
                out("            meta-disk\t\t\tinternal;\n")
                out("            disk {\n")
                for line in options.show_lines("attach", hs["disk_opts"], defaults):
                    out(f"                {line}\n")
                out("            }\n")
            out("        }\n")
        out("    }\n}\n")


def _minor_query(objname, fn):
    try:
        with minor_ctx(objname) as (st, hs):
            text = fn(st, hs)
    except Done:
        raise
    out(text)


def cmd_role(pos, opts):
    def fn(st, hs):
        conn, role, peer_role, disk, _ = kernel.view(st, state.hostname())
        if conn == "StandAlone" and disk == "Diskless":
            return "Unconfigured\n"
        return f"{role}/{peer_role}\n"
    _minor_query(pos[0], fn)


def cmd_cstate(pos, opts):
    def fn(st, hs):
        conn, _r, _p, disk, _ = kernel.view(st, state.hostname())
        return "Unconfigured\n" if conn == "StandAlone" and disk == "Diskless" else f"{conn}\n"
    _minor_query(pos[0], fn)


def cmd_dstate(pos, opts):
    def fn(st, hs):
        conn, _r, _p, disk, pdsk = kernel.view(st, state.hostname())
        if conn == "StandAlone" and disk == "Diskless":
            return "Unconfigured\n"
        return f"{disk}/{pdsk}\n"
    _minor_query(pos[0], fn)


def cmd_get_gi(pos, opts):
    def fn(st, hs):
        if not kernel.attached(hs):
            err("Device has no disk\n")
            raise Done(1)
        u, f = hs["uuids"], hs["flags"]
        bits = [f & 1, (f >> 4) & 1, (f >> 1) & 1, (f >> 2) & 1, (f >> 3) & 1,
                (f >> 5) & 1, (f >> 6) & 1]
        return ":".join(f"{x:016X}" for x in u) + ":" + ":".join(str(b) for b in bits) + "\n"
    _minor_query(pos[0], fn)


def cmd_sh_status(pos, opts):
    objname = pos[0] if pos else "all"
    me = state.hostname()
    if objname.isdigit():
        name = res_of_minor(int(objname))
        names = [name] if name else []
    else:
        names = None if objname == "all" else [objname]
    for name, st in my_resources("all"):
        if names is not None and name not in names:
            continue
        hs = st["hosts"][me]
        if hs["minor"] is None:
            continue
        conn, role, peer_role, disk, pdsk = kernel.view(st, me)
        out(f"_minor={hs['minor']}\n_res_name={name}\n_volume={hs['volume']}\n")
        if conn == "StandAlone" and disk == "Diskless" and role != "Primary":
            out("_known=Unconfigured\n\n_cstate=Unconfigured\n_role=\n_peer=\n_disk=\n_pdsk=\n"
                "_flags_susp=\n_flags_aftr_isp=\n_flags_peer_isp=\n_flags_user_isp=\n"
                "_resynced_percent=\n")
        else:
            out(f"_known=Configured\n\n_cstate={conn}\n_role={role}\n_peer={peer_role}\n"
                f"_disk={disk}\n_pdsk={pdsk}\n\n_flags_susp=\n_flags_aftr_isp=\n"
                "_flags_peer_isp=\n_flags_user_isp=\n\n_resynced_percent=\n")
        out("\n_sh_status_process\n\n\n")


def _wait(pos, opts, done):
    timeout = int(opts.get("wfc-timeout", "0") or 0)
    start = time.time()
    while True:
        with minor_ctx(pos[0]) as (st, hs):
            conn = kernel.view(st, state.hostname())[0]
        if done(conn) or conn_rank(conn) < conn_rank("Unconnected"):
            return
        if timeout and time.time() - start > timeout:
            raise Done(5)
        time.sleep(0.1)


def cmd_wait_connect(pos, opts):
    _wait(pos, opts, lambda c: conn_rank(c) >= conn_rank("Connected"))


def cmd_wait_sync(pos, opts):
    _wait(pos, opts, lambda c: c == "Connected")


HANDLERS = {
    "new-resource": cmd_new_resource, "new-minor": cmd_new_minor, "attach": cmd_attach,
    "connect": cmd_connect, "disconnect": cmd_disconnect, "net-options": cmd_net_options,
    "disk-options": cmd_disk_options, "resource-options": cmd_resource_options,
    "primary": cmd_primary, "secondary": cmd_secondary, "detach": cmd_detach,
    "down": cmd_down, "del-minor": cmd_del_minor, "del-resource": cmd_del_resource,
    "resize": cmd_resize, "check-resize": cmd_check_resize, "events2": cmd_events2,
    "status": cmd_status, "show": cmd_show, "role": cmd_role, "state": cmd_role,
    "cstate": cmd_cstate, "dstate": cmd_dstate, "get-gi": cmd_get_gi,
    "sh-status": cmd_sh_status, "wait-connect": cmd_wait_connect, "wait-sync": cmd_wait_sync,
}


def parse(argv):
    if len(argv) >= 2 and argv[0] not in COMMANDS and argv[1] in COMMANDS:
        argv = [argv[1], argv[0], *argv[2:]]
    if not argv or argv[0] not in COMMANDS:
        err("\nUSAGE: drbdsetup command device arguments options\n\n"
            "invalid command\n" if argv else "\nUSAGE: drbdsetup command device arguments options\n")
        raise Done(20)
    cmd, pos, opts = argv[0], [], {}
    for arg in argv[1:]:
        if arg.startswith("--"):
            key, eq, val = arg[2:].partition("=")
            opts[key] = val if eq else "yes"
        else:
            pos.append(arg)
    return cmd, pos, opts


def main(argv):
    try:
        cmd, pos, opts = parse(argv)
        handler = HANDLERS.get(cmd)
        if handler is None:
            if pos and pos[0].removeprefix("/dev/drbd").isdigit() \
                    and res_of_minor(int(pos[0].removeprefix("/dev/drbd"))) is None:
                failure(pos[0], 127, "unknown minor")
            unsupported(cmd)
        if cmd in ("primary", "secondary", "attach", "detach", "resize", "check-resize",
                   "role", "state", "cstate", "dstate", "get-gi", "disk-options", "del-minor",
                   "wait-connect", "wait-sync", "down", "new-resource", "del-resource",
                   "resource-options", "new-minor", "connect", "disconnect",
                   "net-options") and not pos:
            err("Missing first argument\n")
            raise Done(20)
        handler(pos, opts)
        sys.stdout.flush()
        return 0
    except Done as done:
        sys.stdout.flush()
        return done.rc
