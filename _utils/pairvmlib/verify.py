"""``salt-run pairvm.verify``'s analysis: findings from each pair's hosts' facts.

Pure (no I/O): the runner gathers one ``pairvm.facts`` answer per host
(``None`` for a host that did not answer) and the registries, and this
module turns them into findings with stable codes (docs/verify.md), like
``gnt-cluster verify``: ``analyse`` one pair, ``fleet_checks`` the pairs
against each other.
"""

from pairvmlib import alloc

CODES = {
    "EHOSTDOWN": "a host of the pair did not answer pairvm.facts",
    "EQUERYFAILED": "a query on a host (DRBD, libvirt, LVM, a /machines file) or the registry failed",
    "EVMMISSING": "a VM of pillar/registry is not defined on a host (/machines/<vm> or its LV)",
    "EVMUNKNOWN": "a VM is on a host (/machines, DRBD or LV) but not in pillar/registry",
    "EMACHINESDIFF": "/machines/<vm> differs between the hosts (sha256 of the file bytes)",
    "EDRBDSPLITBRAIN": "DRBD resource StandAlone with a local disc: split brain",
    "EDRBDDISCONNECTED": "DRBD resource down or not Connected",
    "EDRBDNOTUPTODATE": "DRBD disc on a host not UpToDate",
    "EVMRUNNINGTWICE": "VM running on both hosts",
    "EDRBDDUALPRIMARY": "DRBD resource allows two primaries outside a live migration",
    "EVMAWAY": "VM running on the host that is not its home",
    "EVMNOTRUNNING": "VM should run (state running) but runs on neither host",
    "EVNCNOTLOCAL": "VNC of a running VM listens on an address other than 127.0.0.1",
    "EDISCGROWN": "a VM's LVs are bigger than its pillar disc (grown by pairvm.resize)",
    "EHOMEMOVED": "a VM's home in the registry (moved by pairvm.swap) differs from its pillar home",
    "ESWAPUNFINISHED": "a pairvm.swap of a VM was begun and has not finished",
    "EMEMCAP": "the pair's VM memory is over pairvm:memory_cap",
    "EDRBDNOAUTH": "DRBD resource connects without peer authentication (no cram-hmac-alg and secret)",
    "EALLOCCOLLISION": "a registry gives one value (IP, MAC, port, minor, display) to two VMs, or two "
                       "pairs share a MAC, a VM name, a host or a pool on one public network",
    "ETOOLMISSING": "a required tool is missing on a host",
    "EVGMISSING": "a volume group (here/there) is missing on a host",
    "EBRIDGEMISSING": "a bridge the VMs use is missing on a host",
}
VNC_LOCAL = "127.0.0.1"


def finding(severity, code, vm, host, message, pair=None):
    found = {"severity": severity, "code": code, "vm": vm, "host": host, "message": message}
    return dict(found, pair=pair) if pair else found


def line(found):
    vm, host = found["vm"], found["host"]
    pair = f"pair {found['pair']}" if found.get("pair") else "pair"
    where = f"{vm}@{host}" if vm and host else vm or (f"@{host}" if host else pair)
    return f"{found['severity']} {found['code']} {where}: {found['message']}"


def bridges(settings, definitions):
    """The bridges a pair's VMs use: its default one and each VM's own."""
    return {settings["bridge"]} | {d["bridge"] for d in definitions.values() if d.get("bridge")}


def host_checks(host, fact, settings, bridges):
    """What one host's facts say about the host itself: queries, tools, VGs, bridges."""
    found = []
    for query, message in sorted((fact.get("errors") or {}).items()):
        vm = query.split("/", 1)[1] if query.startswith("machines/") else None
        found.append(finding("ERROR", "EQUERYFAILED", vm, host, f"{query}: {message}"))
    for name, machine in sorted(fact["machines"].items()):
        if machine.get("error"):
            found.append(finding("ERROR", "EQUERYFAILED", name, host,
                                  f"/machines/{name} is unreadable: {machine['error']}"))
    if fact["tools_missing"]:
        found.append(finding("ERROR", "ETOOLMISSING", None, host,
                              "missing: " + ", ".join(fact["tools_missing"])
                              + " (salt " + host + " state.apply pairvm.host installs them)"))
    if "volume_groups" not in (fact.get("errors") or {}):
        for vg in settings["volume_groups"]:
            if vg not in fact["volume_groups"]:
                found.append(finding("ERROR", "EVGMISSING", None, host,
                                      f"volume group {vg} does not exist (vgcreate {vg} on a disc)"))
    for bridge in sorted(bridges):
        if not fact["bridges"].get(bridge, {}).get("present"):
            found.append(finding("ERROR", "EBRIDGEMISSING", None, host,
                                  f"bridge {bridge} does not exist: VMs using it cannot start here"))
    return found


def _present(fact, volume_groups):
    """{vm: [where]} of what a host holds of each VM: /machines file, DRBD resource, LV."""
    where = {}
    for name in fact["machines"]:
        where.setdefault(name, []).append(f"/machines/{name}")
    for name in fact["drbd"]:
        where.setdefault(name, []).append(f"DRBD resource {name}")
    for lv in fact["lvs"]:
        vg, _, name = lv.partition("/")
        if vg in volume_groups:
            where.setdefault(name, []).append(f"LV {lv}")
    return where


def vm_host_checks(host, fact, expected, settings):
    """One host's view of each VM: missing, unknown, its disc, DRBD, VNC."""
    found = []
    machines, errors = fact["machines"], fact.get("errors") or {}
    for name in sorted(expected):
        if f"machines/{name}" in errors:  # unreadable: EQUERYFAILED says so
            continue
        if name not in machines:
            found.append(finding("ERROR", "EVMMISSING", name, host,
                                  f"/machines/{name} does not exist: the VM is not defined here "
                                  f"(salt-run state.orchestrate pairvm.orch.apply)"))
            continue
        vg = machines[name].get("vg")
        if vg and "lvs" not in errors and f"{vg}/{name}" not in fact["lvs"]:
            found.append(finding("ERROR", "EVMMISSING", name, host,
                                  f"its disc LV {vg}/{name} does not exist"))
    for name, where in sorted(_present(fact, settings["volume_groups"]).items()):
        if name not in expected:
            found.append(finding("WARNING", "EVMUNKNOWN", name, host,
                                  f"not in pillar or the registry, but here: {', '.join(where)}"))
    if "drbd" not in errors:
        for name in sorted(machines):
            found += _drbd_checks(host, name, fact["drbd"].get(name))
    for name, authenticated in sorted((fact.get("drbd_auth") or {}).items()):
        if authenticated is False:
            found.append(finding("ERROR", "EDRBDNOAUTH", name, host,
                                  f"DRBD resource {name} is configured to connect without peer "
                                  f"authentication (no cram-hmac-alg and shared secret): anything that "
                                  f"reaches the replication network can connect to it; re-apply "
                                  f"pairvm.vms (drbdadm adjust {name} takes the secret)"))
    for name in fact.get("two_primaries") or []:
        found.append(finding("ERROR", "EDRBDDUALPRIMARY", name, host,
                              f"DRBD resource {name} allows two primaries: unless a live migration of "
                              f"{name} runs now, one was interrupted: salt-run pairvm.migrate {name} "
                              f"cleanup=True"))
    for name, listen in sorted(fact["vnc"].items()):
        if listen is not None and listen != VNC_LOCAL:
            found.append(finding("ERROR", "EVNCNOTLOCAL", name, host,
                                  f"VNC listens on {listen}, not {VNC_LOCAL}: anyone who reaches it "
                                  f"sees the console; restart the VM with pairvm (stop, start)"))
    return found


def _drbd_checks(host, name, state):
    if not state:
        return [finding("ERROR", "EDRBDDISCONNECTED", name, host,
                         f"DRBD resource {name} is not up (drbdadm up {name}, or pairvm autostart)")]
    found = []
    if state.get("split_brain"):
        found.append(finding("ERROR", "EDRBDSPLITBRAIN", name, host,
                              f"DRBD resource {name} is StandAlone with its disc {state.get('disk')}: "
                              f"split brain; nothing was discarded: choose the side whose changes to "
                              f"drop (salt-run pairvm.split_brain_victim {name} HOST)"))
    elif state.get("connection") != "Connected":
        found.append(finding("ERROR", "EDRBDDISCONNECTED", name, host,
                              f"DRBD resource {name} is {state.get('connection')}, not Connected: "
                              f"writes are not replicated to the peer"))
    if state.get("disk") != "UpToDate":
        syncing = f" (resync: {state.get('replication')})" if state.get("syncing") else ""
        found.append(finding("ERROR", "EDRBDNOTUPTODATE", name, host,
                              f"DRBD disc of {name} is {state.get('disk')}, not UpToDate{syncing}"))
    return found


def pair_checks(facts, expected, wanted_state):
    """What needs both hosts' facts: /machines digests, where each VM runs."""
    (host_a, fact_a), (host_b, fact_b) = sorted(facts.items())
    found = []
    for name in sorted(set(fact_a["machines"]) & set(fact_b["machines"])):
        digest_a, digest_b = fact_a["machines"][name]["digest"], fact_b["machines"][name]["digest"]
        if digest_a != digest_b:
            found.append(finding("ERROR", "EMACHINESDIFF", name, None,
                                  f"/machines/{name} differs: {host_a} sha256 {digest_a[:12]}, "
                                  f"{host_b} sha256 {digest_b[:12]} (edited by hand? re-apply pairvm.vms)"))
    if any("libvirt" in (fact.get("errors") or {}) for fact in facts.values()):
        return found  # where the VMs run is not known: EQUERYFAILED says why
    known = expected | set(fact_a["machines"]) | set(fact_b["machines"])
    running = {host: set(fact["running"]) & known for host, fact in facts.items()}
    for name in sorted(running[host_a] & running[host_b]):
        found.append(finding("ERROR", "EVMRUNNINGTWICE", name, None,
                              f"running on both {host_a} and {host_b}: both write to the disc; "
                              f"stop it on one host at once"))
    for name in sorted(running[host_a] ^ running[host_b]):
        home, there = wanted_state(name)[2], host_a if name in running[host_a] else host_b
        if home and home != there:
            found.append(finding("WARNING", "EVMAWAY", name, there,
                                  f"runs away from its home {home} (salt-run pairvm.migrate {name} "
                                  f"brings it home)"))
    for name in sorted(expected):
        state, suppressed, home = wanted_state(name)
        defined = name in fact_a["machines"] or name in fact_b["machines"]
        if state != "running" or not defined or name in running[host_a] | running[host_b]:
            continue
        if suppressed:
            found.append(finding("WARNING", "EVMNOTRUNNING", name, home,
                                  "should run (state running) but runs on neither host; it is suppressed "
                                  "from autostart"))
        else:
            found.append(finding("ERROR", "EVMNOTRUNNING", name, home,
                                  f"should run (state running) but runs on neither host "
                                  f"(pairvm start {name} on {home or 'its home'})"))
    return found


def wanted(definitions, facts):
    """A function: VM name -> (state, suppressed, home), from pillar, else from a host's record."""

    def wanted_state(name):
        records = [f["machines"][name] for f in facts.values() if f and name in f["machines"]]
        definition = definitions.get(name) or (records[0] if records else {})
        home = definition.get("home")
        suppressed = bool(definition.get("suppress")) or any(
            name in (f.get("suppressed") or []) for h, f in facts.items() if f and h == home
        )
        return definition.get("state", "running"), suppressed, home

    return wanted_state


def disc_checks(definitions, entries, facts):
    """A VM whose LVs are bigger than its definition's disc (rounded up to the VG's extents):
    its pillar describes a disc that no longer exists. A WARNING while the registry's entry
    (``entries[name]``) keeps the grown size (``salt-run pairvm.resize`` recorded it), else an
    ERROR: nothing records it."""
    found = []
    for name, definition in sorted(definitions.items()):
        grown = {}
        for host, fact in sorted(facts.items()):
            machine = (fact or {}).get("machines", {}).get(name) or {}
            if not machine.get("vg") or "lvs" in (fact.get("errors") or {}):
                continue
            lv = fact["lvs"].get(f"{machine['vg']}/{name}")
            extent = (fact["volume_groups"].get(machine["vg"]) or {}).get("extent_mib") or 1
            if lv is not None and lv > -(-definition["disc_mib"] // extent) * extent:
                grown[host] = lv
        if not grown:
            continue
        biggest = max(grown.values())
        lvs = ", ".join(f"{lv} MiB on {host}" for host, lv in grown.items())
        said = f"its definition gives a {definition['disc_mib']} MiB disc, but its LVs are {lvs}"
        if (entries.get(name) or {}).get("disc_mib", 0) >= biggest:
            found.append(finding("WARNING", "EDISCGROWN", name, None,
                                 f"{said}: grown by salt-run pairvm.resize, whose size the registry keeps; "
                                 f"set disc: {biggest}M in pillar, which describes a disc that no longer "
                                 f"exists"))
        else:
            found.append(finding("ERROR", "EDISCGROWN", name, None,
                                 f"{said} and nothing records that size (grown by hand, or by pairvm.resize "
                                 f"on the hosts alone): a host rebuilt from pillar gets a smaller LV, which "
                                 f"DRBD refuses as a peer; record it: salt-run pairvm.resize {name} "
                                 f"{biggest}M"))
    return found


def home_checks(definitions, entries):
    """A VM whose home ``salt-run pairvm.swap`` moved (the registry's ``entries[name]``
    keeps it) while its pillar entry still gives the old one, and a swap not finished."""
    found = []
    for name, entry in sorted(entries.items()):
        moved, pillar = entry.get("home"), definitions.get(name, {}).get("home")
        if moved and pillar and moved != pillar:
            found.append(finding("WARNING", "EHOMEMOVED", name, None,
                                 f"its home is {moved} since salt-run pairvm.swap (the registry keeps it), "
                                 f"but its pillar entry pairvm:vms:{name}:home gives {pillar}: set "
                                 f"home: {moved} there"))
        if entry.get("swap"):
            found.append(finding("WARNING", "ESWAPUNFINISHED", name, None,
                                 f"a swap of its home to {entry['swap']['to']} has begun and not finished "
                                 f"(its old LVs still hold the data): run salt-run pairvm.swap {name}"))
    return found


def rehomed(definitions, entries):
    """``definitions`` with the homes the registry's ``entries`` keep (``pairvm.swap``)."""
    return {name: {**d, "home": (entries.get(name) or {}).get("home") or d.get("home")}
            for name, d in definitions.items()}


def memory_check(settings, definitions, facts):
    cap = settings.get("memory_cap") or 0
    memory = {name: d["memory"] for name, d in definitions.items()}
    for fact in facts.values():
        for name, machine in (fact or {}).get("machines", {}).items():
            if name not in memory and isinstance(machine.get("memory"), int):
                memory[name] = machine["memory"]
    total = sum(memory.values())
    if cap <= 0 or total <= cap:
        return []
    return [finding("ERROR", "EMEMCAP", None, None,
                     f"the pair's {len(memory)} VMs total {total} MiB of memory, over "
                     f"pairvm:memory_cap {cap} MiB")]


def _count(number, noun):
    return f"{number} {noun}{'' if number == 1 else 's'}"


def result(findings, pairs=None):
    """The runner's answer: findings sorted, counted and as lines; ``pairs``: those checked."""
    order = {"ERROR": 0, "WARNING": 1}
    findings = sorted(findings, key=lambda f: (order[f["severity"]], f["code"], f.get("pair") or "",
                                               f["vm"] or "", f["host"] or "", f["message"]))
    errors = sum(1 for f in findings if f["severity"] == "ERROR")
    warnings = len(findings) - errors
    answer = {
        "ok": errors == 0,
        "summary": f"{_count(errors, 'error')}, {_count(warnings, 'warning')}",
        "lines": [line(f) for f in findings],
        "findings": findings,
        "retcode": 1 if errors else 0,
    }
    return answer if pairs is None else {**answer, "pairs": list(pairs)}


def fleet_checks(registries, pair=None):
    """What the pairs' registries ({pair: registry}) give twice across pairs (a MAC, a VM
    name, a host, overlapping pools on one network); with ``pair``, what concerns it."""
    return [finding("ERROR", "EALLOCCOLLISION", None, None, message)
            for message in alloc.fleet_collisions(registries)
            if pair is None or f"pair {pair!r}" in message]



def analyse(settings, definitions, registry, facts, bridges):
    """Every finding about a pair: its settings and definitions (pillar), the
    ``registry`` (None when it could not be read), ``facts`` ({host: the
    host's ``pairvm.facts`` or None when it did not answer}) and the
    ``bridges`` the VMs use."""
    findings = [finding("ERROR", "EALLOCCOLLISION", None, None, message)
                for message in alloc.collisions(registry or {"vms": {}})]
    known = (registry.get("vms") or {}) if isinstance(registry, dict) else {}
    expected = set(definitions) | set(known)
    for host, fact in facts.items():
        if fact is not None:
            findings += host_checks(host, fact, settings, bridges)
            findings += vm_host_checks(host, fact, expected, settings)
    if all(fact is not None for fact in facts.values()):
        findings += pair_checks(facts, expected, wanted(rehomed(definitions, known), facts))
    findings += disc_checks(definitions, known, facts)
    findings += home_checks(definitions, known)
    findings += memory_check(settings, definitions, facts)
    return findings
