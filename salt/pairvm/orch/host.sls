# -*- coding: utf-8 -*-
# vim: ft=sls
# Set up both hosts of every pair of this master, or of one pair:
#   salt-run state.orchestrate pairvm.orch.host
#   salt-run state.orchestrate pairvm.orch.host pillar='{"pairvm_pair": "two"}'
# Each host publishes its SSH identity through the Salt mine during its first
# apply; the second pass of pairvm.host.ssh then trusts the peer. After this,
# `state.apply pairvm` changes nothing. Last, the master's peer_run ACL for the
# host command (master.d/pairvm-peer.conf, salt-run pairvm.peer_acl): when it
# changed, restart the salt-master to apply it.
{%- set only = salt['pillar.get']('pairvm_pair') %}
{%- set pairs = salt['saltutil.runner']('pairvm.pairs') %}
{%- if pairs.get('retcode') is number or (only and only not in pairs) %}

pairvm-orch-host-pairs:
  test.fail_without_changes:
    - name: {{ (pairs.get('error') if pairs.get('retcode') is number else 'no pair ' ~ only ~ ' (salt-run pairvm.pairs)')
               | yaml_dquote }}
{%- else %}
{%-   set chosen = [] %}
{%-   for name, pair in pairs | dictsort if not only or name == only %}
{%-     set hosts = pair.hosts | join(',') %}
{%-     do chosen.append(name) %}

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
{%-   endfor %}

pairvm-orch-host-peer-acl:
  salt.runner:
    - name: pairvm.peer_acl
    - write: true
    - require:
{%-   for name in chosen %}
      - salt: pairvm-orch-host-{{ name }}-setup
{%-   endfor %}
{%- endif %}
