# -*- coding: utf-8 -*-
# vim: ft=sls
# The pairvm_drbd beacon (pillar pairvm:watch; README "Monitoring"): one
# long-lived `drbdsetup events2` reader per host whose debounced events
# (salt/beacon/<minion>/pairvm_drbd/<resource>/<event>) feed the reactor of
# salt/pairvm/reactor/. Saved in the minion's beacons.conf. A beacon lives in
# the minion daemon: a masterless run (salt-call --local) leaves it alone.
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import pairvm with context %}
{%- set watch = pairvm.watch %}
{%- if opts.get('file_client') == 'local' %}

pairvm-host-watch-beacon:
  test.show_notification:
    - text: >-
        masterless run: a beacon is managed through a running minion (and
        reports to a master); the pairvm_drbd beacon is left as it is
{%- elif watch.beacon %}
{#- saltutil.sync_all copies the beacon but does not reload the minion's
    beacons: until they are reloaded, the beacon is "not available". #}
{%-   if 'pairvm_drbd' not in (salt['beacons.list_available'](return_yaml=False) or []) %}

pairvm-host-watch-beacon-reload:
  module.run:
    - saltutil.refresh_beacons: []
    - require_in:
      - beacon: pairvm-host-watch-beacon
{%-   endif %}

pairvm-host-watch-beacon:
  beacon.present:
    - name: pairvm_drbd
    - save: true
    - debounce: {{ watch.debounce }}
    - max_delay: {{ watch.max_delay }}
    - retry:  # the reload above is asynchronous
        attempts: 5
        interval: 2
{%- else %}

pairvm-host-watch-beacon:
  beacon.absent:
    - name: pairvm_drbd
    - save: true
{%- endif %}
