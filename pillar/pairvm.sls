# -*- coding: utf-8 -*-
# vim: ft=sls
# The example pillar of the demo pair lab (tests/lab): hostA and hostB.
# Every key is documented in pillar.example at the repository root.
pairvm:
  pair:
    hostA:
      admin_ip: 10.77.0.11
      replication_ip: 10.78.0.11
    hostB:
      admin_ip: 10.77.0.12
      replication_ip: 10.78.0.12
  bridge: br0
  memory_cap: 2048
  # The lab has no usable KVM: QEMU runs under TCG.
  domain_type: qemu
  vms: {}
