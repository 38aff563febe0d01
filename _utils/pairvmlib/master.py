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


def pair_hosts(settings):
    """The two hosts of a pair's (validated) settings, sorted."""
    return sorted(settings["pair"])
