# -*- coding: utf-8 -*-
# vim: ft=sls
# Apply the pair's VMs in a safe order:
#   salt-run state.orchestrate pairvm.orch.apply
# 1. the master validates pillar and allocates (nothing changes if invalid);
# 2. both hosts create storage and bring DRBD up as Secondary;
# 3. both hosts converge: home hosts promote and start their VMs.
{%- set pair = salt['pillar.get']('pairvm:pair', {}) | list | sort %}

pairvm-orch-allocate:
  salt.runner:
    - name: pairvm.allocate

pairvm-orch-refresh-pillar:
  salt.function:
    - name: saltutil.refresh_pillar
    - tgt: {{ pair | join(',') }}
    - tgt_type: list
    - kwarg:
        wait: true
    - require:
      - salt: pairvm-orch-allocate

pairvm-orch-storage:
  salt.state:
    - tgt: {{ pair | join(',') }}
    - tgt_type: list
    - sls: pairvm.vms
    - pillar:
        pairvm_phase: present
    - require:
      - salt: pairvm-orch-refresh-pillar

pairvm-orch-converge:
  salt.state:
    - tgt: {{ pair | join(',') }}
    - tgt_type: list
    - sls: pairvm.vms
    - require:
      - salt: pairvm-orch-storage
