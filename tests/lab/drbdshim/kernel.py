"""The DRBD 8.4 kernel rules the shim keeps (drbd_state.c, drbd_receiver.c).

Everything here works on one resource's state dict (see state.py) while its
lock is held. ``settle()`` plays the "kernel threads": it finishes a resync
whose time has come and brings the replication link up or down (handshake,
split-brain detection, loss of connection) according to both hosts' net
configuration and the lab's link flag.
"""

import os
import subprocess
import time

from . import devices
from .state import conn_rank, disk_rank, link_is_cut

# How long a resync takes, read by each shim call: a caller that gives a long time holds a
# running resync (the next call with the usual time ends it), so a test reads the sync
# states without racing a timer.
SYNC_SECONDS = float(os.environ.get("PVLAB_DRBD_SYNC_SECONDS", "1.0"))
C_MASK = "C_MASK"
# The kernel's usermode helper is /sbin/drbdadm; in the lab, the drbdadm shim.
DRBDADM = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "shims", "drbdadm")


def log(st, msg):
    st["log"] = (st.get("log") or [])[-40:] + [f"{time.time():.3f} {msg}"]


def peer_of(st, host):
    others = [h for h in st["hosts"] if h != host]
    return others[0] if others else None


def attached(hs):
    return hs is not None and hs["disk"] != "Diskless"


def connected(st):
    return st["link"] == "up"


def view(st, host):
    """(conn, role, peer_role, disk, peer_disk) as this host's kernel sees it."""
    hs = st["hosts"][host]
    peer = st["hosts"].get(peer_of(st, host) or "")
    if connected(st) and peer is not None:
        return hs["conn"], hs["role"], peer["role"], hs["disk"], peer["disk"]
    pdsk = "Outdated" if hs["flags"] & devices.MDF_PEER_OUT_DATED else "DUnknown"
    return hs["conn"], hs["role"], "Unknown", hs["disk"], pdsk


def two_primaries_allowed(hs):
    net = hs.get("net") or {}
    return net.get("opts", {}).get("allow-two-primaries", "no") == "yes"


# --- UUIDs and meta data --------------------------------------------------------

def new_current_uuid(hs):
    """drbd_uuid_new_current(): bitmap UUID := current, current := random."""
    val = int.from_bytes(os.urandom(8), "little") & ~1
    if hs["role"] == "Primary":
        val |= 1
    hs["uuids"][1] = hs["uuids"][0]
    hs["uuids"][0] = val


def uuid_set_bm_zero(hs):
    """drbd_uuid_set_bm(device, 0): the bitmap UUID moves into the history."""
    if hs["uuids"][1]:
        hs["uuids"][3] = hs["uuids"][2]
        hs["uuids"][2] = hs["uuids"][1]
        hs["uuids"][1] = 0


def md_sync(st, host, clean=False):
    """The md flags __drbd_set_state() derives, written to the super block."""
    hs = st["hosts"][host]
    if not attached(hs):
        return
    conn, role, peer_role, disk, pdsk = view(st, host)
    keep = ~(devices.MDF_CONSISTENT | devices.MDF_PRIMARY_IND | devices.MDF_CONNECTED_IND
             | devices.MDF_WAS_UP_TO_DATE | devices.MDF_PEER_OUT_DATED | 64
             | devices.MDF_AL_CLEAN)
    mdf = hs["flags"] & keep
    if role == "Primary" or (disk_rank(pdsk) < disk_rank("Inconsistent")
                             and peer_role == "Primary"):
        mdf |= devices.MDF_PRIMARY_IND
    if conn_rank(conn) > conn_rank("WFReportParams"):
        mdf |= devices.MDF_CONNECTED_IND
    if disk_rank(disk) > disk_rank("Inconsistent"):
        mdf |= devices.MDF_CONSISTENT
    if disk_rank(disk) > disk_rank("Outdated"):
        mdf |= devices.MDF_WAS_UP_TO_DATE
    if disk_rank("Inconsistent") <= disk_rank(pdsk) <= disk_rank("Outdated"):
        mdf |= devices.MDF_PEER_OUT_DATED
    if clean:
        mdf |= devices.MDF_AL_CLEAN
    hs["flags"] = mdf
    hs["uuids"][0] = (hs["uuids"][0] | 1) if role == "Primary" else (hs["uuids"][0] & ~1)
    devices.write_md(hs["backing_rdev"], hs["backing_sect"], hs["size"], hs["uuids"], mdf)


def md_sync_all(st):
    for host in st["hosts"]:
        md_sync(st, host)


# --- where each host's /dev/drbdN points --------------------------------------------

def repoint(hs, rdev):
    """Re-create the host's /dev/drbdN over another backing device (only done
    while nobody holds it open)."""
    new = devices.loop_attach(rdev, hs["size"])
    devices.set_readonly(new, hs["role"] != "Primary")
    devices.make_node(hs["mntns"], hs["minor"], new)
    old, hs["loop"], hs["map"] = hs["loop"], new, rdev
    if old is not None:
        devices.loop_detach(old)


def share(st, src, dst):
    """After a sync (or a handshake finding equal data) both hosts' devices
    map the same backing device: the bytes are the same on both, live."""
    s, d = st["hosts"][src], st["hosts"][dst]
    if s["map"] == d["map"] or s["loop"] is None or d["loop"] is None:
        return
    if not devices.openers(d["loop"]):
        repoint(d, s["map"])
        log(st, f"bytes: {dst} now shares {src}'s data ({s['map']})")
    elif not devices.openers(s["loop"]):
        devices.copy_data(s["map"], d["map"], d["size"])
        repoint(s, d["map"])
        log(st, f"bytes: {dst} held open, {src}'s data copied into it, {src} shares it")
    else:
        devices.copy_data(s["map"], d["map"], d["size"])
        log(st, f"bytes: both held open, {src}'s data copied to {dst}")


def split(st):
    """The link went down: each host needs its own copy of the shared bytes."""
    hosts = [h for h in st["hosts"] if st["hosts"][h]["loop"] is not None]
    if len(hosts) != 2:
        return
    a, b = (st["hosts"][h] for h in hosts)
    if a["map"] != b["map"]:
        return
    shared = a["map"]
    owner = a if a["backing_rdev"] == shared else b
    other = b if owner is a else a
    spare = other["backing_rdev"]
    for mover in (other, owner):
        if not devices.openers(mover["loop"]):
            devices.copy_data(shared, spare, mover["size"])
            repoint(mover, spare)
            log(st, f"bytes: split, copy of {shared} made in {spare}")
            return
    log(st, "bytes: split impossible, both hosts hold the device open: they keep sharing")


# --- sync handshake ------------------------------------------------------------------

def uuid_compare(me, peer):
    """drbd_uuid_compare() (rules 10..100), simplified to what two nodes need."""
    jc = devices.UUID_JUST_CREATED
    s, p = me[0] & ~1, peer[0] & ~1
    if s == jc and p == jc:
        return 0
    if s in (jc, 0) and p != jc:
        return -2
    if s != jc and p in (jc, 0):
        return 2
    if s == p:
        return 0
    if peer[1] & ~1 == s:
        return -1
    if any(h & ~1 == s for h in peer[2:4]):
        return -2
    if me[1] & ~1 == p:
        return 1
    if any(h & ~1 == p for h in me[2:4]):
        return 2
    if me[1] & ~1 == peer[1] & ~1 and me[1] & ~1:
        return 100
    if any(h & ~1 == j & ~1 for h in me[2:4] for j in peer[2:4]):
        return -100
    return -1000


def _asb_0p(policy, ch_self, ch_peer, resolve):
    if policy == "discard-local":
        return -1
    if policy == "discard-remote":
        return 1
    if policy in ("discard-zero-changes", "discard-least-changes"):
        if not ch_self and not ch_peer:
            return -1 if resolve else 1
        if not ch_peer:
            return 1
        if not ch_self:
            return -1
        if policy == "discard-least-changes":
            return -1 if resolve else 1
    return -100


def handshake(st, a, b):
    """hg from a's point of view (>0: a is SyncSource), or C_MASK."""
    A, B = st["hosts"][a], st["hosts"][b]
    hg = uuid_compare(A["uuids"], B["uuids"])
    log(st, f"handshake {a}->{b}: uuid_compare={hg}")
    if hg == -1000:
        log(st, "Unrelated data, aborting!")
        return C_MASK
    da, db = disk_rank(A["disk"]), disk_rank(B["disk"])
    inc = disk_rank("Inconsistent")
    if (da == inc and db > inc) or (db == inc and da > inc):
        full = hg == -100 or abs(hg) == 2
        hg = 1 if da > inc else -1
        if full:
            hg *= 2
    if hg == 100:
        opts = A["net"]["opts"]
        pcount = (A["role"] == "Primary") + (B["role"] == "Primary")
        ch_a = A["changed"] or A["disk"] == "Inconsistent"
        ch_b = B["changed"] or B["disk"] == "Inconsistent"
        resolve = a > b
        p0 = opts.get("after-sb-0pri", "disconnect")
        if pcount == 0:
            hg = _asb_0p(p0, ch_a, ch_b, resolve)
        elif pcount == 1:
            p1 = opts.get("after-sb-1pri", "disconnect")
            if p1 == "discard-secondary":
                hg = 1 if A["role"] == "Primary" else -1
            elif p1 in ("consensus", "violently-as0p"):
                h0 = _asb_0p(p0, ch_a, ch_b, resolve)
                if p1 == "violently-as0p" or (h0 == -1 and A["role"] == "Secondary") \
                        or (h0 == 1 and A["role"] == "Primary"):
                    hg = h0
                else:
                    hg = -100
            else:
                hg = -100
        else:
            p2 = opts.get("after-sb-2pri", "disconnect")
            hg = _asb_0p(p0, ch_a, ch_b, resolve) if p2 == "violently-as0p" else -100
        if abs(hg) < 100:
            log(st, f"Split-Brain detected, {pcount} primaries, automatically solved")
    if hg == -100:
        if A["discard_my_data"] and not B["discard_my_data"]:
            hg = -1
        if not A["discard_my_data"] and B["discard_my_data"]:
            hg = 1
        if abs(hg) < 100:
            log(st, "Split-Brain detected, manually solved")
    if hg == -100:
        log(st, "Split-Brain detected but unresolved, dropping connection!")
        for host in (a, b):
            run_helper(st, host, "split-brain")
        return C_MASK
    for me, g in ((A, hg), (B, -hg)):
        if g > 0 and disk_rank(me["disk"]) <= inc:
            log(st, "I shall become SyncSource, but I am inconsistent!")
            return C_MASK
        if g < 0 and me["role"] == "Primary" and disk_rank(me["disk"]) >= disk_rank("Consistent"):
            log(st, "I shall become SyncTarget, but I am primary!")
            return C_MASK
    return hg


def run_helper(st, host, helper):
    """drbd_khelper(): ``drbdadm <helper> minor-N`` run in that host (its
    mount and UTS namespaces), with the kernel's environment; drbdadm runs
    the resource's handler. Its exit code is only logged, as the kernel does."""
    hs = st["hosts"][host]
    env = {"HOME": "/", "TERM": "linux", "PATH": "/sbin:/usr/sbin:/bin:/usr/bin",
           "DRBD_MINOR": str(hs["minor"]),
           "PVLAB_DATA": os.environ.get("PVLAB_DATA", "/var/tmp/pvlab")}
    try:
        pid = devices.pid_in_mntns(hs["mntns"])
        proc = subprocess.run(["nsenter", "-t", str(pid), "-m", "-u", "--", DRBDADM, helper,
                               f"minor-{hs['minor']}"], env=env, capture_output=True, text=True,
                              timeout=30, check=False)
        rc = proc.returncode
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        rc = f"not run ({exc})"
    log(st, f"{host}: helper command: drbdadm {helper} minor-{hs['minor']} exit code {rc}")


def start_sync(st, src, dst, now):
    S, D = st["hosts"][src], st["hosts"][dst]
    S["conn"], D["conn"] = "SyncSource", "SyncTarget"
    D["disk"] = "Inconsistent"
    st["sync"] = {"src": src, "dst": dst, "start": now}
    log(st, f"resync {src} -> {dst} started")


def finish_sync(st):
    sync, st["sync"] = st["sync"], None
    src, dst = sync["src"], sync["dst"]
    S, D = st["hosts"][src], st["hosts"][dst]
    share(st, src, dst)
    D["uuids"][1:4] = list(S["uuids"][1:4])
    D["uuids"][1] = D["uuids"][0]
    D["uuids"][0] = S["uuids"][0]
    uuid_set_bm_zero(D)
    uuid_set_bm_zero(S)
    D["disk"] = "UpToDate"
    S["conn"] = D["conn"] = "Connected"
    log(st, f"resync {src} -> {dst} done")
    md_sync_all(st)


def peer_auth(hs):
    """What a side's net config asks of its peer: (cram-hmac-alg, shared-secret), or Nones."""
    opts = hs["net"]["opts"]
    return opts.get("cram-hmac-alg"), opts.get("shared-secret")


def wants_link(st):
    if len(st["hosts"]) != 2 or link_is_cut(st["name"]):
        return False
    a, b = st["hosts"].values()
    if not a["net"] or not b["net"]:
        return False
    if peer_auth(a) != peer_auth(b):
        # drbd_do_auth: "Authentication of peer failed" (or "Peer authentication required"):
        # the kernel drops the attempt and tries again at connect-int, WFConnection meanwhile
        return False
    return a["net"]["local"] == b["net"]["peer"] and a["net"]["peer"] == b["net"]["local"]


def lose_connection(st):
    if st["sync"]:
        log(st, "resync aborted by connection loss")
        st["sync"] = None
    st["link"] = "down"
    for hs in st["hosts"].values():
        hs["conn"] = "WFConnection" if hs["net"] else "StandAlone"
        if hs["role"] == "Primary" and hs["disk"] == "UpToDate" and hs["uuids"][1] == 0:
            new_current_uuid(hs)
    split(st)
    for hs in st["hosts"].values():
        if hs["map"]:
            hs["split_mark"] = devices.backing_mtime(hs["map"])
        hs["changed"] = False
    md_sync_all(st)


def establish(st, now):
    a, b = sorted(st["hosts"])
    A, B = st["hosts"][a], st["hosts"][b]
    for hs in (A, B):
        if hs["map"] and hs["split_mark"] is not None:
            hs["changed"] = hs["changed"] or devices.backing_mtime(hs["map"]) != hs["split_mark"]
    hg = handshake(st, a, b) if attached(A) and attached(B) else 0
    if hg == C_MASK:
        for hs in (A, B):
            hs["net"], hs["conn"], hs["discard_my_data"] = None, "StandAlone", False
        md_sync_all(st)
        return
    st["link"] = "up"
    for hs in (A, B):
        hs["conn"], hs["discard_my_data"] = "Connected", False
    if attached(A) and attached(B):
        size = min(devices.max_data_sect(A["backing_sect"]), devices.max_data_sect(B["backing_sect"]))
        for hs in (A, B):
            if hs["size"] != size:
                hs["size"] = size
                devices.loop_set_size(hs["loop"], size)
        if hg > 0:
            start_sync(st, a, b, now)
        elif hg < 0:
            start_sync(st, b, a, now)
        else:
            src, dst = (b, a) if devices.openers(B["loop"]) else (a, b)
            share(st, src, dst)
    log(st, f"connected (hg={hg})")
    md_sync_all(st)


def settle(st, now=None):
    """Advance the resource to where the real kernels would be by now."""
    now = time.time() if now is None else now
    if st["sync"] and now >= st["sync"]["start"] + SYNC_SECONDS and connected(st):
        finish_sync(st)
    want = wants_link(st)
    if connected(st) and not want:
        lose_connection(st)
    elif not connected(st) and want:
        establish(st, now)
