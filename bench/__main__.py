"""Run every benchmark: python -m bench."""

from bench import lab_list

lab_list.main()
