# -*- coding: utf-8 -*-
# vim: ft=sls
# The demo's VMs: one homed on each lab host, booting the test guest
# (tests/guest, copied into each host's /var/lib/libvirt/boot by the lab).
pairvm:
  vms:
    demo1:
      home: hostA
      memory: 128
      disc: 64M
      hypervisor_options:
        kernel: /var/lib/libvirt/boot/pairvm-guest-vmlinuz
        initrd: /var/lib/libvirt/boot/pairvm-guest-initrd.img
        cmdline: console=ttyS0 pairvm.hostname=demo1
    demo2:
      home: hostB
      memory: 128
      disc: 64M
      hypervisor_options:
        kernel: /var/lib/libvirt/boot/pairvm-guest-vmlinuz
        initrd: /var/lib/libvirt/boot/pairvm-guest-initrd.img
        cmdline: console=ttyS0 pairvm.hostname=demo2
