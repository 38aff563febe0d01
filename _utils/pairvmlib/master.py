"""What the formula's runners need of the master: pairs, a host's pillar, calls to hosts.

``Master(__opts__)`` in a runner. Each runner file of the virtual name
``pairvm`` uses it, so that finding a pair and calling its hosts is done one
way. A pair is found from the registries (``pairvmlib.registry``: each
records its pair's hosts), never by compiling every minion's pillar; only
``pairs(discover=True)`` compiles the pillar of the accepted minions that no
registry names yet, to find new pairs. Failures raise ``Failed`` naming the
host and what to check.
"""

import salt.client
import salt.key
import salt.pillar
from pairvmlib import alloc, registry
from pairvmlib.errors import Failed

# A host's answer to test.ping, before anything is changed: a killed salt-minion makes
# a call wait for Salt's whole timeout (minutes). The ping waits PING_TIMEOUT, then
# Salt's saltutil.find_job waits FIND_JOB_TIMEOUT for the silent ones.
PING_TIMEOUT = 5
FIND_JOB_TIMEOUT = 3


class Master:
    def __init__(self, opts):
        self.opts = opts

    # --- pillar -------------------------------------------------------------------------------

    def compile(self, minion):
        """The whole pillar the master compiles for ``minion`` (its top file matches by id)."""
        pillar = salt.pillar.get_pillar(self.opts, {"id": minion}, minion, saltenv="base").compile_pillar()
        if pillar.get("_errors"):
            raise Failed(f"the master cannot render {minion}'s pillar: "
                         + "; ".join(map(str, pillar["_errors"])))
        return pillar

    def pillar(self, minion=None, pair=None):
        """Pillar ``pairvm`` as the master compiles it for ``minion``; without one, for a
        host of pair ``pair`` (default: the master's only pair)."""
        if minion is None:
            name = registry.resolve(self.opts, pair)
            found = self.pairs().get(name)
            if not found or not found["hosts"]:  # not allocated yet: its hosts' pillar names it
                found = self.pairs(discover=True).get(name)
            if not found or not found["hosts"]:
                raise Failed(f"no pair {name!r}: no registry and no accepted minion's pillar names it "
                             f"(pairvm:pair_name, pairvm:pair)")
            minion = found["hosts"][0]
        pairvm = self.compile(minion).get("pairvm") or {}
        if not isinstance(pairvm.get("pair"), dict) or minion not in pairvm["pair"]:
            raise Failed(f"{minion} is not a host of a pair: its pillar has no pairvm:pair naming it "
                         f"(the top file gives each pair's pillar to its two hosts)")
        return pairvm

    # --- pairs ----------------------------------------------------------------------------------

    def pairs(self, discover=False, errors=None):
        """{pair: {"hosts": [two minion ids], "vms": number, "registered": bool}}: the pairs the
        registries record and, with ``discover``, those the pillar of the other accepted
        minions names (pairs not allocated yet). A registry that cannot be read raises,
        or, given a dict ``errors``, is noted there ({pair: why})."""
        found = {}
        for name in registry.pair_names(self.opts):
            try:
                saved = registry.read(self.opts, name)
            except Failed as exc:
                if errors is None:
                    raise
                errors[name] = str(exc)
                continue
            found[name] = {"hosts": alloc.registry_hosts(saved), "vms": len(saved.get("vms") or {}),
                           "registered": True}
        if not discover:
            return found
        known = {host for pair in found.values() for host in pair["hosts"]}
        for minion in sorted(salt.key.get_key(self.opts).list_status("accepted")["minions"]):
            if minion in known:
                continue
            pairvm = self.compile(minion).get("pairvm") or {}
            hosts = pairvm.get("pair") if isinstance(pairvm.get("pair"), dict) else {}
            name = pairvm.get("pair_name") or registry.DEFAULT
            if minion not in hosts:
                continue
            known.update(hosts)
            entry = found.setdefault(name, {"hosts": [], "vms": 0, "registered": False})
            if entry["hosts"] and entry["hosts"] != sorted(hosts):
                raise Failed(f"pair {name!r} is claimed by two pairs of hosts, {', '.join(entry['hosts'])} "
                             f"and {', '.join(sorted(hosts))} (pillar of {minion}): give each pair its "
                             f"own pairvm:pair_name")
            entry["hosts"] = sorted(hosts)
        return found

    def pair(self, pair=None, vm=None):
        """``(name, hosts)`` of a registered pair: ``pair``; else the pair whose registry
        holds VM ``vm``; else the master's only pair."""
        if pair is None and vm is not None:
            holders = [name for name, saved in registry.pairs(self.opts).items()
                       if vm in saved.get("vms", {})]
            if len(holders) > 1:
                raise Failed(f"VM {vm} is in the registries of pairs {', '.join(holders)}: name one with "
                             f"pair=NAME (salt-run pairvm.verify reports it)")
            if not holders:
                raise Failed(f"VM {vm} is in no pair's registry (salt-run pairvm.list shows the VMs; a VM "
                             f"pillar defines is registered by salt-run pairvm.allocate); to act on what a "
                             f"pair's hosts hold of it anyway, name the pair with pair=NAME")
            pair = holders[0]
        name = registry.resolve(self.opts, pair)
        hosts = alloc.registry_hosts(registry.read(self.opts, name))
        if not hosts:
            raise Failed(f"pair {name!r} has no registry recording its hosts yet: run salt-run "
                         f"pairvm.allocate first")
        return name, hosts

    # --- calls --------------------------------------------------------------------------------

    def client(self):
        return salt.client.get_local_client(self.opts["conf_file"])

    def silent(self, hosts):
        """The hosts of ``hosts`` that do not answer a ping within about 8 s (one publish)."""
        if not hosts:
            return []
        ret = self.client().cmd(sorted(hosts), "test.ping", [], tgt_type="list", timeout=PING_TIMEOUT,
                                gather_job_timeout=FIND_JOB_TIMEOUT, full_return=True)
        return sorted(h for h in hosts if (ret or {}).get(h, {}).get("ret") is not True)

    def require(self, hosts):
        """Refuse (``Failed``, before anything changes) when a host of ``hosts`` does not answer."""
        down = self.silent(hosts)
        if down:
            raise Failed(
                f"{', '.join(down)} did not answer a ping within {PING_TIMEOUT + FIND_JOB_TIMEOUT} s: is "
                f"the host up and its salt-minion running? (salt-run manage.status; salt {down[0]} "
                f"test.ping). Nothing was changed")

    def call(self, minion, function, *args, timeout=300, **kwargs):
        """Run an execution function on one minion; raise with its message if it failed."""
        ret = self.client().cmd(minion, function, list(args), timeout=timeout, kwarg=kwargs,
                                full_return=True)
        if minion not in ret:
            raise Failed(f"{minion} did not answer {function} within {timeout}s")
        result = ret[minion]
        if result.get("retcode", 0) != 0:
            raise Failed(f"{minion}: {function} failed: {result.get('ret')}")
        return result["ret"]

    def call_all(self, hosts, function, timeout=300, **kwargs):
        """One publish of ``function`` to ``hosts``: {host: full answer, or None when silent}."""
        ret = self.client().cmd(sorted(hosts), function, [], tgt_type="list", timeout=timeout,
                                kwarg=kwargs, full_return=True) if hosts else {}
        return {host: (ret or {}).get(host) for host in hosts}

    def call_each(self, calls, timeout=300):
        """Run execution functions on several minions at once, each with its own
        arguments: ``calls`` is ``{minion: (function, args, kwargs)}``. Returns
        ``{minion: {"ret", "retcode"}}``, None for a minion that did not answer."""
        client = self.client()
        jobs = {minion: client.run_job([minion], function, list(args), tgt_type="list", kwarg=kwargs,
                                       timeout=timeout, listen=True)
                for minion, (function, args, kwargs) in calls.items()}
        answers = dict.fromkeys(calls)
        for minion, job in jobs.items():  # all are running: gather them in turn
            for ret in client.get_cli_event_returns(job["jid"], job["minions"], timeout, [minion], "list") \
                    if job else ():
                if ret.get(minion, {}).get("out") != "no_return" and "ret" in ret.get(minion, {}):
                    answers[minion] = ret[minion]
        return answers


def refused(context, exc):
    """What a runner returns when it refuses or fails: the message and a non-zero retcode
    (salt-run exits with a returned dict's ``retcode``; ``publish.runner`` hands the dict on)."""
    context["retcode"] = 1
    return {"error": str(exc), "retcode": 1}


def pair_hosts(settings):
    """The two hosts of a pair's (validated) settings, sorted."""
    return sorted(settings["pair"])
