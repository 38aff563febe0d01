# -*- coding: utf-8 -*-
# vim: ft=sls
# Set up both hosts of every pair of this master, or of one pair:
#   salt-run state.orchestrate pairvm.orch.host
#   salt-run state.orchestrate pairvm.orch.host pillar='{"pairvm_pair": "two"}'
# Each host publishes its SSH identity through the Salt mine during its first
# apply; the second pass of pairvm.host.ssh then trusts the peer. After this,
# `state.apply pairvm` changes nothing.
{%- set only = salt['pillar.get']('pairvm_pair') %}
{%- set pairs = salt['saltutil.runner']('pairvm.pairs') %}
{%- if pairs.get('retcode') is number or (only and only not in pairs) %}

pairvm-orch-host-pairs:
  test.fail_without_changes:
    - name: {{ (pairs.get('error') if pairs.get('retcode') is number else 'no pair ' ~ only ~ ' (salt-run pairvm.pairs)')
               | yaml_dquote }}
{%- endif %}
{%- for name, pair in pairs | dictsort if pairs.get('retcode') is not number and (not only or name == only) %}
{%-   set hosts = pair.hosts | join(',') %}

pairvm-orch-host-{{ name }}-setup:
  salt.state:
    - tgt: {{ hosts }}
    - tgt_type: list
    - sls: pairvm

pairvm-orch-host-{{ name }}-ssh-trust:
  salt.state:
    - tgt: {{ hosts }}
    - tgt_type: list
    - sls: pairvm.host.ssh
    - require:
      - salt: pairvm-orch-host-{{ name }}-setup
{%- endfor %}
