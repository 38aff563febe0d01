# -*- coding: utf-8 -*-
# vim: ft=sls
# This host's view of the pair (/machines/_global, JSON), read by host-local
# commands so that a host still works while the master is down, and the
# host command `pairvm`.
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import pairvm, me, peers with context %}

{%- if me not in pairvm.pair %}
pairvm-config-host-in-pair:
  test.fail_without_changes:
    - name: {{ ("minion " ~ me ~ " is not one of pillar pairvm:pair (" ~ pairvm.pair | list | join(', ') ~ ")")
               | yaml_dquote }}
{%- else %}
{%- set peer = peers | first | default(none) %}
{%- set backup = salt['pairvm_host.backup_settings']() %}

pairvm-config-machines-dir:
  file.directory:
    - name: /machines
    - user: root
    - group: root
    - mode: '0755'

pairvm-config-global-file:
  file.serialize:
    - name: /machines/_global
    - serializer: json
    - user: root
    - group: root
    - mode: '0644'
    - dataset:
        me: {{ me | json }}
        peer: {{ peer | json }}
        here_ip: {{ pairvm.pair[me].admin_ip | json }}
        there_ip: {{ (pairvm.pair[peer].admin_ip if peer else none) | json }}
        here_replication_ip: {{ pairvm.pair[me].replication_ip | json }}
        there_replication_ip: {{ (pairvm.pair[peer].replication_ip if peer else none) | json }}
        bridge: {{ pairvm.bridge | json }}
        volume_groups: {{ pairvm.volume_groups | json }}
        libvirt_uri: {{ pairvm.libvirt_uri | json }}
        memory_cap: {{ pairvm.memory_cap | json }}
        domain_type: {{ pairvm.domain_type | json }}
        backup: {{ backup | json }}
    - require:
      - file: pairvm-config-machines-dir

pairvm-config-cli:
  file.managed:
    - name: {{ pairvm.cli.path | yaml_dquote }}
    - source: salt://{{ tplroot }}/files/pairvm
    - template: jinja
    - context:
        # The command is pairvmlib.hostcmd, synced with the modules into this minion's cache.
        utils_dir: {{ (opts.extension_modules ~ '/utils') | json }}
        config_dir: {{ salt['file.dirname'](opts.conf_file) | json }}
    - user: root
    - group: root
    - mode: '0755'
{%- endif %}
