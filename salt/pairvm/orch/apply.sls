# -*- coding: utf-8 -*-
# vim: ft=sls
# Apply the VMs of every pair of this master, or of one pair, each in a safe order:
#   salt-run state.orchestrate pairvm.orch.apply
#   salt-run state.orchestrate pairvm.orch.apply pillar='{"pairvm_pair": "two"}'
# For each pair (salt-run pairvm.pairs: its registry, or its hosts' pillar):
# 1. the master validates the pair's pillar and allocates (nothing changes if invalid);
# 2. both hosts create storage and bring DRBD up as Secondary;
# 3. both hosts converge: home hosts promote and start their VMs.
# A pair that fails stops its own steps only.
{%- set only = salt['pillar.get']('pairvm_pair') %}
{%- set pairs = salt['saltutil.runner']('pairvm.pairs') %}
{%- if pairs.get('retcode') is number or (only and only not in pairs) %}

pairvm-orch-pairs:
  test.fail_without_changes:
    - name: {{ (pairs.get('error') if pairs.get('retcode') is number else 'no pair ' ~ only ~ ' (salt-run pairvm.pairs)')
               | yaml_dquote }}
{%- endif %}
{%- for name, pair in pairs | dictsort if pairs.get('retcode') is not number and (not only or name == only) %}
{%-   set hosts = pair.hosts | join(',') %}

pairvm-orch-{{ name }}-allocate:
  salt.runner:
    - name: pairvm.allocate
    - minion: {{ pair.hosts | first }}

pairvm-orch-{{ name }}-refresh-pillar:
  salt.function:
    - name: saltutil.refresh_pillar
    - tgt: {{ hosts }}
    - tgt_type: list
    - kwarg:
        wait: true
    - require:
      - salt: pairvm-orch-{{ name }}-allocate

pairvm-orch-{{ name }}-storage:
  salt.state:
    - tgt: {{ hosts }}
    - tgt_type: list
    - sls: pairvm.vms
    - pillar:
        pairvm_phase: present
    - require:
      - salt: pairvm-orch-{{ name }}-refresh-pillar

pairvm-orch-{{ name }}-converge:
  salt.state:
    - tgt: {{ hosts }}
    - tgt_type: list
    - sls: pairvm.vms
    - require:
      - salt: pairvm-orch-{{ name }}-storage
{%- endfor %}
