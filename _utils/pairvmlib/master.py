"""What the formula's runners need of the master: a minion's pillar, calls to minions.

``Master(__opts__)`` in a runner. Each runner file of the virtual name
``pairvm`` uses it, so that finding the pair and calling its hosts is done
one way. Failures raise ``Failed`` naming the host and what to check.
"""

import salt.client
import salt.key
import salt.pillar
from pairvmlib.errors import Failed


class Master:
    def __init__(self, opts):
        self.opts = opts

    def pillar(self, minion=None):
        """Pillar ``pairvm`` as the master compiles it for ``minion`` (default: any pair host)."""
        candidates = [minion] if minion else salt.key.get_key(self.opts).list_status("accepted")["minions"]
        for mid in candidates:
            pillar = salt.pillar.get_pillar(self.opts, {"id": mid}, mid, saltenv="base").compile_pillar()
            if pillar.get("pairvm", {}).get("pair"):
                return pillar["pairvm"]
        raise Failed(f"no pillar pairvm:pair for {minion or 'any accepted minion'}: "
                     f"define the pair in pillar")

    def pair_hosts_everywhere(self):
        """Every accepted minion that is a host of the pair its own pillar defines, sorted."""
        hosts = []
        for mid in salt.key.get_key(self.opts).list_status("accepted")["minions"]:
            pillar = salt.pillar.get_pillar(self.opts, {"id": mid}, mid, saltenv="base").compile_pillar()
            if mid in ((pillar.get("pairvm") or {}).get("pair") or {}):
                hosts.append(mid)
        return sorted(hosts)

    def client(self):
        return salt.client.get_local_client(self.opts["conf_file"])

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


def refused(context, exc):
    """What a runner returns when it refuses or fails: the message and a non-zero retcode
    (salt-run exits with a returned dict's ``retcode``; ``publish.runner`` hands the dict on)."""
    context["retcode"] = 1
    return {"error": str(exc), "retcode": 1}


def pair_hosts(settings):
    """The two hosts of a pair's (validated) settings, sorted."""
    return sorted(settings["pair"])
