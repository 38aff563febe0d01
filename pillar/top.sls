# -*- coding: utf-8 -*-
# vim: ft=sls
# Pillar by minion id (never by grains): the pair's hosts get the pair's pillar.
base:
  'hostA,hostB':
    - match: list
    - pairvm
    - demo_vms
