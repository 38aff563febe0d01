"""Run every benchmark: python -m bench."""

from bench import backup_throughput, vm_scale

vm_scale.main()
backup_throughput.main()
