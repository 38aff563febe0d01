"""Run every benchmark: ``python -m bench`` (full), ``python -m bench --quick`` (the bench
tier of ./scripts/test: each one runs briefly and prints its figures; no target is checked)."""

import sys

from bench import backup_throughput, fleet, metrics, migration, vm_scale

quick = "--quick" in sys.argv[1:]
vm_scale.main(quick=quick)
fleet.main(quick=quick)
backup_throughput.main(quick=quick)
migration.main(quick=quick)
metrics.main(quick=quick)
