"""Run every benchmark: python -m bench."""

from bench import vm_scale

vm_scale.main()
