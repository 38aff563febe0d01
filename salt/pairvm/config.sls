# -*- coding: utf-8 -*-
# vim: ft=sls
# This host's view of the pair (/machines/_global), read by host-local commands
# so that a host still works while the master is down.
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import pairvm, me, peers with context %}

{%- if me not in pairvm.pair %}
pairvm-config-host-in-pair:
  test.fail_without_changes:
    - name: "minion {{ me }} is not one of pillar pairvm:pair ({{ pairvm.pair | list | join(', ') }})"
{%- else %}
{%- set peer = peers | first | default(none) %}
{#- The SSH settings of backups, for the host command without a master
    (flat keys: the host command reads this file without a YAML parser). #}
{%- set backup = salt['pairvm.backup_settings']() %}

pairvm-config-machines-dir:
  file.directory:
    - name: {{ pairvm.machines_dir }}
    - user: root
    - group: root
    - mode: '0755'

pairvm-config-global-file:
  file.serialize:
    - name: {{ pairvm.machines_dir }}/_global
    - serializer: yaml
    - user: root
    - group: root
    - mode: '0644'
    - dataset:
        me: {{ me }}
        peer: {{ peer }}
        here_ip: {{ pairvm.pair[me].admin_ip }}
        there_ip: {{ pairvm.pair[peer].admin_ip if peer else none }}
        here_replication_ip: {{ pairvm.pair[me].replication_ip }}
        there_replication_ip: {{ pairvm.pair[peer].replication_ip if peer else none }}
        bridge: {{ pairvm.bridge }}
        memory_cap: {{ pairvm.memory_cap }}
        domain_type: {{ pairvm.domain_type }}
{%- for key in ('key', 'known_hosts', 'port', 'speed', 'compress', 'snapshot_size') %}
        backup_{{ key }}: {{ backup[key] | json }}
{%- endfor %}
    - require:
      - file: pairvm-config-machines-dir

pairvm-config-cli:
  file.managed:
    - name: {{ pairvm.cli.path }}
    - source: salt://{{ tplroot }}/files/pairvm
    - user: root
    - group: root
    - mode: '0755'
{%- endif %}
