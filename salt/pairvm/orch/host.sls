# -*- coding: utf-8 -*-
# vim: ft=sls
# Set up both hosts of the pair:
#   salt-run state.orchestrate pairvm.orch.host
# Each host publishes its SSH identity through the Salt mine during its first
# apply; the second pass of pairvm.host.ssh then trusts the peer. After this,
# `state.apply pairvm` changes nothing. Last, the master's peer_run ACL for the
# host command (master.d/pairvm-peer.conf, salt-run pairvm.peer_acl): when it
# changed, restart the salt-master to apply it.
{%- set pair = salt['pillar.get']('pairvm:pair', {}) | list | sort %}

pairvm-orch-host-setup:
  salt.state:
    - tgt: {{ pair | join(',') }}
    - tgt_type: list
    - sls: pairvm

pairvm-orch-host-ssh-trust:
  salt.state:
    - tgt: {{ pair | join(',') }}
    - tgt_type: list
    - sls: pairvm.host.ssh
    - require:
      - salt: pairvm-orch-host-setup

pairvm-orch-host-peer-acl:
  salt.runner:
    - name: pairvm.peer_acl
    - write: true
    - require:
      - salt: pairvm-orch-host-setup
