"""Just enough of LVM's command-line grammar to find positionals.

The shim never validates arguments: real LVM does that first. It only needs
to tell options that take a value from positional arguments (VG, VG/LV,
/dev/VG/LV) for the few commands whose device side depends on *which* LVs
the command names (``lvcreate --snapshot``, ``lvchange -a``, ``lvremove``).
The option tables come from ``<cmd> --longhelp`` of lvm2 2.03.16.
"""

from __future__ import annotations

from dataclasses import dataclass, field

_COMMON_VAL = {
    "commandprofile", "config", "devices", "devicesfile", "driverloaded",
    "journal", "lockopt", "profile", "reportformat", "autobackup",
}
_COMMON_FLAG = {
    "debug", "help", "longhelp", "nohints", "nolocking", "noudevsync", "quiet",
    "test", "verbose", "version", "yes",
}

# command -> (short options taking a value, long options taking a value,
#             long options without a value)
TABLES = {
    "lvcreate": (
        set("ACILMRVWZacijklmnpr"),
        _COMMON_VAL | {
            "activate", "addtag", "alloc", "cachedevice", "cachemetadataformat",
            "cachemode", "cachepolicy", "cachepool", "cachesettings", "cachesize",
            "cachevol", "chunksize", "compression", "contiguous", "deduplication",
            "discards", "errorwhenfull", "extents", "major", "maxrecoveryrate",
            "metadataprofile", "minor", "minrecoveryrate", "mirrorlog", "mirrors",
            "monitor", "name", "permission", "persistent", "poolmetadatasize",
            "poolmetadataspare", "raidintegrity", "raidintegrityblocksize",
            "raidintegritymode", "readahead", "regionsize", "setactivationskip",
            "setautoactivation", "size", "stripes", "stripesize", "thinpool", "type",
            "vdopool", "vdosettings", "virtualsize", "wipesignatures", "zero",
        },
        _COMMON_FLAG | {
            "cache", "ignoreactivationskip", "ignoremonitoring", "nosync",
            "snapshot", "thin", "vdo",
        },
    ),
    "lvchange": (
        set("ACMSZajkpr"),
        _COMMON_VAL | {
            "activate", "activationmode", "addtag", "alloc", "cachemode",
            "cachepolicy", "cachesettings", "compression", "contiguous",
            "deduplication", "deltag", "discards", "errorwhenfull", "major",
            "maxrecoveryrate", "metadataprofile", "minor", "minrecoveryrate",
            "monitor", "permission", "persistent", "poll", "readahead", "rebuild",
            "select", "setactivationskip", "setautoactivation", "syncaction",
            "vdosettings", "writebehind", "writemostly", "zero",
        },
        _COMMON_FLAG | {
            "detachprofile", "force", "ignoreactivationskip", "ignorelockingfailure",
            "ignoremonitoring", "partial", "readonly", "refresh", "resync", "sysinit",
        },
    ),
    "lvremove": (
        set("AS"),
        _COMMON_VAL | {"select"},
        _COMMON_FLAG | {"force", "nohistory"},
    ),
}

SHORT_TO_LONG = {
    "a": "activate", "n": "name", "L": "size", "l": "extents", "s": "snapshot",
    "S": "select", "t": "test", "y": "yes", "f": "force", "q": "quiet",
}


@dataclass
class Parsed:
    """Options (canonical long name -> list of values) and positionals."""

    options: dict = field(default_factory=dict)
    positionals: list = field(default_factory=list)
    # argv tokens with the location of each item, for rewriting
    items: list = field(default_factory=list)

    def has(self, name):
        return name in self.options

    def last(self, name, default=None):
        vals = self.options.get(name)
        return vals[-1] if vals else default


def _long(name, longs):
    """Resolve a (possibly abbreviated, like getopt_long) long option name."""
    if name in longs:
        return name
    matches = [o for o in longs if o.startswith(name)]
    return matches[0] if len(matches) == 1 else name


def parse(cmd, args):
    """Split ``args`` of LVM command ``cmd`` into options and positionals.

    ``items`` lists ``(kind, name, value, tokens)`` where kind is "opt" or
    "pos" and tokens are the original argv words of that item; short flags
    grouped in one word (``-qq``, ``-sn NAME``) come out one item each with
    the word split accordingly.
    """
    short_val, long_val, long_flag = TABLES[cmd]
    longs = long_val | long_flag
    out = Parsed()

    def add(name, value, tokens):
        out.options.setdefault(name, []).append(value)
        out.items.append(("opt", name, value, tokens))

    i = 0
    while i < len(args):
        word = args[i]
        if word == "--":
            for rest in args[i + 1:]:
                out.positionals.append(rest)
                out.items.append(("pos", None, rest, [rest]))
            break
        if word.startswith("--"):
            name, eq, value = word[2:].partition("=")
            name = _long(name, longs)
            if name in long_val and not eq:
                value = args[i + 1] if i + 1 < len(args) else ""
                add(name, value, [word, value])
                i += 2
                continue
            add(name, value if eq else None, [word])
        elif word.startswith("-") and len(word) > 1:
            j = 1
            while j < len(word):
                ch = word[j]
                name = SHORT_TO_LONG.get(ch, ch)
                if ch in short_val:
                    if j + 1 < len(word):
                        add(name, word[j + 1:], [f"-{ch}{word[j + 1:]}"])
                    else:
                        value = args[i + 1] if i + 1 < len(args) else ""
                        add(name, value, [f"-{ch}", value])
                        i += 1
                    break
                add(name, None, [f"-{ch}"])
                j += 1
        else:
            out.positionals.append(word)
            out.items.append(("pos", None, word, [word]))
        i += 1
    return out
