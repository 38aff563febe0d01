# -*- coding: utf-8 -*-
# vim: ft=sls
# Reactor for salt/minion/<id>/start: a pair host's minion is back (after a
# reboot): pairvm.autostart there (resources up, the VMs homed there that
# should run started). Only minions named in pillar pairvm:pair match.
{%- set minion = data.get('id', '') %}

pairvm-reactor-autostart:
  local.pairvm.autostart:
    - tgt: {{ (minion ~ " and I@pairvm:pair:" ~ minion ~ ":admin_ip:*") | json }}
    - tgt_type: compound
