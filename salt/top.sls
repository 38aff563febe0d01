# -*- coding: utf-8 -*-
# vim: ft=sls
# The pair's hosts get the formula (the lab pillar lists them as pairvm:pair).
base:
  'hostA,hostB':
    - match: list
    - pairvm
