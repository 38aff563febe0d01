# -*- coding: utf-8 -*-
# vim: ft=sls
base:
  '*':
    - pairvm
    - demo_vms
