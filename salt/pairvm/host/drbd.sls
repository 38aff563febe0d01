# -*- coding: utf-8 -*-
# vim: ft=sls
# DRBD's common configuration, the same text the VM code writes
# (pairvm.drbd_common_config): protocol C, split-brain policies that never
# discard a side with changes, resync settings from pairvm:drbd_options.
# Root-only (0600), with the resource files, when a shared secret is set.
{%- set tplroot = tpldir.split('/')[0] %}

include:
  - .packages

pairvm-host-drbd-global-common:
  pairvm_host.drbd_global_common:
    - name: /etc/drbd.d/global_common.conf
    - require:
      - sls: {{ tplroot }}.host.packages
