# -*- coding: utf-8 -*-
# vim: ft=sls
# The whole formula on a pairvm host.
include:
  - .host
  - .config
