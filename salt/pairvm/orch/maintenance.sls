# -*- coding: utf-8 -*-
# vim: ft=sls
# A maintenance round of one host of the pair, without taking its VMs down:
#   salt-run state.orchestrate pairvm.orch.maintenance pillar='{"host": "hostA"}'
#   salt-run state.orchestrate pairvm.orch.maintenance pillar='{"host": "hostA", "sls": "pairvm.host.packages"}'
# 1. live-migrate every VM running on HOST to its peer (salt-run pairvm.evacuate);
#    if one cannot move, the round stops here and the VMs keep running;
# 2. apply the states `sls` on HOST (default pairvm.host: packages, network,
#    DRBD and libvirt setup; never pairvm.vms, whose home-host VMs now run on the peer);
# 3. bring every VM whose home is HOST back (salt-run pairvm.return).
# For a reboot, run the steps by hand: salt-run pairvm.evacuate HOST, reboot,
# salt-run pairvm.return HOST.
{%- set host = salt['pillar.get']('host') %}
{%- set sls = salt['pillar.get']('sls', 'pairvm.host') %}
{%- if not host %}

pairvm-orch-maintenance-host:
  test.fail_without_changes:
    - name: "pass the host to maintain: pillar='{\"host\": \"HOST\"}'"
{%- else %}

pairvm-orch-maintenance-evacuate:
  salt.runner:
    - name: pairvm.evacuate
    - host: {{ host | yaml_dquote }}

pairvm-orch-maintenance-apply:
  salt.state:
    - tgt: {{ host | yaml_dquote }}
    - sls: {{ sls | yaml_dquote }}
    - require:
      - salt: pairvm-orch-maintenance-evacuate

pairvm-orch-maintenance-return:
  salt.runner:
    - name: pairvm.return
    - host: {{ host | yaml_dquote }}
    - require:
      - salt: pairvm-orch-maintenance-apply
{%- endif %}
