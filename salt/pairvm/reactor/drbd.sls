# -*- coding: utf-8 -*-
# vim: ft=sls
# Reactor for the pairvm_drbd beacon's events
# (salt/beacon/<minion>/pairvm_drbd/<resource>/<event>; README "Monitoring").
# - connection_lost while StandAlone without split brain (a plain disconnect):
#   pairvm.reconnect on that host (drbdadm connect with backoff, gives up
#   after a limit and says so).
# - split_brain: nothing is resolved; an alert event
#   pairvm/alert/split_brain/<resource> for the operator.
{%- set event = data.get('event') %}
{%- set resource = data.get('resource') %}
{%- set minion = data.get('id') %}

{%- if event == 'connection_lost' and data.get('connection') == 'StandAlone' and not data.get('split_brain') %}

pairvm-reactor-reconnect-{{ resource }}:
  local.pairvm.reconnect:
    - tgt: {{ minion | json }}
    - args:
      - name: {{ resource | json }}
{%- elif event == 'split_brain' %}

pairvm-reactor-split-brain-{{ resource }}:
  runner.event.send:
    - args:
      - tag: pairvm/alert/split_brain/{{ resource }}
      - data:
          resource: {{ resource | json }}
          host: {{ minion | json }}
          message: {{ ("DRBD split brain of " ~ resource ~ " seen on " ~ minion ~ ": nothing was discarded; "
                       ~ "salt-run pairvm.verify shows it, pairvm split_brain_victim resolves it") | json }}
{%- endif %}
