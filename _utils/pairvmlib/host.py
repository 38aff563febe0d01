"""This host as the execution modules see it: its records, its runtime, its locks.

``Host`` is built per call from the loader's dunders, passed in explicitly
(``Host(__salt__, __opts__, __context__, __grains__, __pillar__)``, or
``Host.of(globals())`` in a module). It reads
layer 2 (``machines``), queries the runtime once per job (LVM, DRBD and
libvirt: one query each, however many VMs there are; what pairvm itself
changes clears the cache), serializes operations on one VM (``lock``), runs
an operation's steps or only lists them (``Plan``), and reports progress.
Everything it refuses or fails raises ``Failed``.
"""

import contextlib
import fcntl
import json
import logging
import os
import sys
import time

from pairvmlib import defaults, layout, machines, progress, schema
from pairvmlib.errors import Failed

try:
    import libvirt

    HAS_LIBVIRT = True
except ImportError:  # the execution modules' __virtual__ says so
    libvirt = None
    HAS_LIBVIRT = False

log = logging.getLogger(__name__)

RUNTIME = "pairvm.runtime"


def check_name(name):
    """``name`` if it is a valid VM name, else ``Invalid`` naming the rule."""
    return schema.validate_name(name)


class Host:
    """One pair host: ``me`` (its minion id), its settings, records and runtime."""

    def __init__(self, salt, opts, context, grains, pillar=None):
        self.salt, self.opts, self.context = salt, opts, context
        self.me = grains["id"]
        self.pillar = pillar if pillar is not None else {}

    @classmethod
    def of(cls, dunders):
        """The host of a formula module, from the Salt dunders of its ``globals()``."""
        return cls(dunders["__salt__"], dunders["__opts__"], dunders["__context__"], dunders["__grains__"],
                   dunders.get("__pillar__"))

    # --- layer 2 ------------------------------------------------------------------------------

    def view(self):
        """``/machines/_global``: this host's view of the pair (see ``machines``)."""
        return machines.read_global()

    def setting(self, key):
        """A host-local setting (bridge, volume_groups, libvirt_uri, memory_cap, ...):
        ``/machines/_global`` (rendered from pillar), else its default."""
        return self.view().get(key, defaults.SETTINGS.get(key))

    def machines(self):
        """Every VM defined on this host: ``{name: record as read from /machines/<name>}``."""
        found = {}
        for name in machines.vm_names():
            data = schema.parse_yaml(machines.record_bytes(name) or b"")
            if not isinstance(data, dict):
                raise Failed(f"{layout.machine_path(name)}: {name} is not a mapping of pairvm settings")
            found[name] = data
        return found

    def machine(self, name):
        """The checked record of VM ``name`` (``/machines/<name>``)."""
        data = machines.record_bytes(check_name(name))
        if data is None:
            raise Failed(machines.no_vm(name))
        return schema.load_record(data.decode("utf-8"))

    def check_cdrom(self, path):
        """Refuse a CD image that is not the absolute path of a readable regular file here."""
        if not isinstance(path, str) or not os.path.isabs(path) or ".." in path.split("/"):
            raise Failed(f"cdrom: {path!r} is not an absolute path without '..'")
        if not os.path.exists(path):
            raise Failed(f"cdrom: {path} does not exist on {self.me}")
        if not os.path.isfile(path):
            raise Failed(f"cdrom: {path} is not a regular file on {self.me}")
        if not os.access(path, os.R_OK):
            raise Failed(f"cdrom: {path} cannot be read on {self.me}")
        return path

    def vg(self, record):
        return record["hosts"][self.me]["vg"]

    def other_host(self, record):
        return record["peer"] if record["home"] == self.me else record["home"]

    # --- runtime queries: once per job -------------------------------------------------------

    def cached(self, key, query):
        cache = self.context.setdefault(RUNTIME, {})
        if key not in cache:
            cache[key] = query()
        return cache[key]

    def forget_runtime(self):
        self.context.pop(RUNTIME, None)

    def drbd(self, name=None):
        """DRBD state of all resources ({} for one that is down), or of one."""
        status = self.cached("drbd", self.salt["drbd.status"])
        return status.get(name, {}) if name else status

    def lvs(self):
        """{"vg/lv": size in MiB} of every LV on this host (one query)."""
        found = self.cached("lvs", lambda: self.salt["lvm.lvdisplay"](quiet=True))
        return {path[len("/dev/"):]: int(info["Logical Volume Size"]) // 2048 for path, info in found.items()}

    def lv_report(self, fields, *lvs):
        """Rows of ``lvs --reportformat json -o FIELDS [LV...]`` (one query)."""
        res = self.salt["cmd.run_all"](["lvs", "--reportformat", "json", "-o", ",".join(fields), *lvs],
                                       python_shell=False, ignore_retcode=True)
        if res["retcode"] != 0:
            raise Failed(f"lvs failed: {(res['stderr'] or res['stdout']).strip()}")
        try:
            return [row for part in json.loads(res["stdout"])["report"] for row in part.get("lv", [])]
        except (ValueError, KeyError, TypeError) as exc:
            raise Failed(f"lvs printed no JSON report: {exc}") from exc

    def snapshots(self):
        """{"vg/origin": [snapshot LV names]} of every LVM snapshot on this host (one query)."""
        found = {}
        for row in self.lv_report(("lv_name", "vg_name", "origin")):
            if row.get("origin"):
                found.setdefault(f"{row['vg_name']}/{row['origin']}", []).append(row["lv_name"])
        return {origin: sorted(snaps) for origin, snaps in found.items()}

    @contextlib.contextmanager
    def libvirt(self):
        uri = self.setting("libvirt_uri")
        try:
            conn = libvirt.open(uri)
        except libvirt.libvirtError as exc:
            raise Failed(f"cannot reach libvirt at {uri}: {exc}") from exc
        try:
            yield conn
        finally:
            conn.close()

    @staticmethod
    def domain(conn, name):
        try:
            return conn.lookupByName(name)
        except libvirt.libvirtError:
            return None

    def running(self, cached=False):
        """Names of the running libvirt domains (one query; with ``cached``, once per job
        like ``drbd`` and ``lvs``: what pairvm changes clears it)."""
        if cached:
            return self.cached("running", self.running)
        with self.libvirt() as conn:
            return {dom.name() for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)}

    def is_running(self, conn, name):
        dom = self.domain(conn, name)
        return dom is not None and dom.isActive()

    # --- acting ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, name):
        """Serialize operations on one VM on this host."""
        os.makedirs(layout.LOCK_DIR, exist_ok=True)
        with open(os.path.join(layout.LOCK_DIR, f"{name}.lock"), "w", encoding="utf-8") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise Failed(f"another pairvm operation on {name} is running on this host; "
                             f"try again") from exc
            yield

    def plan(self, name, test):
        return Plan(self, name, test)

    def run(self, argv, what):
        """Run argv (never a shell); its stdout, or ``Failed`` with its message."""
        res = self.salt["cmd.run_all"](argv, python_shell=False, ignore_retcode=True, output_loglevel="quiet")
        if res["retcode"] != 0:
            raise Failed(f"{what} failed: {(res['stderr'] or res['stdout']).strip()}")
        return res["stdout"]

    # --- LVM through Salt's lvm module, checked by what LVM then reports ---------------------

    def _lvm_failed(self, what, output):
        said = output.get(f"Output from {what.split()[0]}") if isinstance(output, dict) else output
        raise Failed(f"{what} failed: {said}")

    def lvcreate(self, name, vg, **options):
        """A new LV ``vg/name`` (Salt's ``lvm.lvcreate`` with ``options``: ``size="64M"``,
        or ``snapshot=ORIGIN`` with ``size`` or ``extents="20%ORIGIN"``, ``force``)."""
        out = self.salt["lvm.lvcreate"](name, vg, **options)
        self.forget_runtime()
        if f"{vg}/{name}" not in self.lvs():
            self._lvm_failed(f"lvcreate {vg}/{name}", out)

    def lvremove(self, name, vg):
        out = self.salt["lvm.lvremove"](name, vg)
        self.forget_runtime()
        if f"{vg}/{name}" in self.lvs():
            self._lvm_failed(f"lvremove {vg}/{name}", out)

    def lvextend(self, lv, mib):
        out = self.salt["lvm.lvextend"](size=f"{mib}M", lvpath=f"/dev/{lv}")
        self.forget_runtime()
        if self.lvs().get(lv, 0) < mib:
            self._lvm_failed(f"lvextend {lv}", out)

    # --- DRBD ---------------------------------------------------------------------------------

    def write_resource(self, path, text, mode):
        """Write a resource file and have drbdadm parse it; a rejected one is put back."""
        old = machines.read_text(path)
        machines.write_atomic(path, text, mode)
        try:
            self.salt["drbd.check_config"]("/etc/drbd.conf")
        except Exception as exc:
            machines.put_back(path, old, mode)
            name = os.path.basename(path)[: -len(".res")]
            raise Failed(f"drbdadm rejected the resource file of {name} ({path}): {exc}") from exc

    def check_peer_receives(self, record, what):
        """Before writing ``what`` onto the disc through DRBD: Connected, both discs
        UpToDate, the peer Secondary, so that the peer receives every byte."""
        name = record["name"]
        drbd = self.drbd(name)
        if not drbd:
            raise Failed(f"DRBD resource {name} is not up on {self.me}: run pairvm.autostart")
        if drbd.get("peer_role") == "Primary":
            raise Failed(f"VM {name}'s disc is Primary on the peer: stop it there first")
        if drbd.get("connection") != "Connected":
            raise Failed(
                f"DRBD resource {name} is {drbd.get('connection')}, not Connected: the peer would not "
                f"receive {what}. Reconnect the pair first"
            )
        if drbd.get("disk") != "UpToDate" or drbd.get("peer_disk") != "UpToDate":
            raise Failed(
                f"VM {name}'s discs are {drbd.get('disk')} here and {drbd.get('peer_disk')} on the peer, "
                f"not both UpToDate: wait for the sync to finish"
            )
        return drbd

    def demote_after_failure(self, name, what):
        """A failed operation promoted ``name``: demote it again, logging (not raising) a failure."""
        try:
            self.salt["drbd.secondary"](name)
        except Exception as exc:  # noqa: BLE001 - the operation's own error is the one to raise
            log.error("pairvm: %s of %s failed and DRBD could not be demoted: %s", what, name, exc)

    # --- progress -----------------------------------------------------------------------------

    def progress(self, operation, name, figures):
        """Report a long operation's figures (bytes, total, percent, rate, eta).

        As event ``pairvm/<operation>/<name>/progress`` (the master's bus under a
        minion, the local bus under ``salt-call --local``) and, under salt-call,
        as a line on stderr for the terminal (``progress.PREFIX``).
        """
        data = dict(figures, operation=operation, name=name)
        try:
            self.salt["event.send"](f"pairvm/{operation}/{name}/progress", data)
        except Exception as exc:  # noqa: BLE001 - progress must never fail the operation
            log.debug("pairvm: progress event not sent: %s", exc)
        if self.opts.get("__cli") == "salt-call":
            sys.stderr.write(f"{progress.PREFIX}{progress.line(operation, name, figures)}\n")
            sys.stderr.flush()

    def reporter(self, operation, name, total, **extra):
        """A function ``report(done, final=False)`` that reports ``operation``'s progress
        (with ``extra`` such as ``phase`` in the event) at most once a second, and
        always the final count; it returns the figures it reported, or None."""
        meter = progress.Meter(total, time.monotonic())

        def report(done, final=False):
            figures = meter.update(done, time.monotonic(), final=final)
            if figures is not None:
                self.progress(operation, name, dict(figures, **extra))
            return figures

        return report


class Plan:
    """Steps of an operation: done in order, or only listed with test=True."""

    def __init__(self, host, name, test):
        self.host, self.name, self.test, self.changes = host, name, test, []
        self.saved = {}  # path: (previous content or None, mode), put back on failure

    def step(self, description, action, *args, **kwargs):
        self.changes.append(description)
        if self.test:
            return None
        try:
            return action(*args, **kwargs)
        finally:
            self.host.forget_runtime()

    def write(self, path, text, mode=0o644, write=None):
        """Write a file when its content differs (True then); ``saved`` keeps what to put back."""
        previous = machines.read_text(path)
        if previous == text:
            return False
        self.saved[path] = (previous, mode)
        self.step(f"write {path}", write or machines.write_atomic, path, text, mode)
        return True

    def result(self, comment):
        if self.test and self.changes:
            comment = f"would: {comment}"
        return {"name": self.name, "changes": self.changes, "comment": comment}
