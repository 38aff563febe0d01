"""Run the benchmarks: ``python -m bench`` (full), ``python -m bench --quick`` (the bench
tier of ./scripts/test: each one runs briefly and prints its figures; no target is checked).
Names select some of them, in their order: ``python -m bench --quick migration metrics``."""

import sys

from bench import backup_throughput, fleet, metrics, migration, vm_scale

BENCHES = {"vm_scale": vm_scale, "fleet": fleet, "backup_throughput": backup_throughput,
           "migration": migration, "metrics": metrics}

args = sys.argv[1:]
quick = "--quick" in args
names = [a for a in args if a != "--quick"] or list(BENCHES)
unknown = sorted(set(names) - set(BENCHES))
if unknown:
    sys.exit(f"bench: no benchmark named {', '.join(unknown)} (there are: {', '.join(BENCHES)})")
for name in names:
    BENCHES[name].main(quick=quick)
