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
  pool:
    cidr: 10.79.0.0/24
    gateway: 10.79.0.1
  bridge: br0
  memory_cap: 2048
  # The lab has no usable KVM: QEMU runs under TCG.
  domain_type: qemu
  # Fast resync and reconnect on the lab's links.
  drbd_options:
    c_plan_ahead: 0
    resync_rate: 100M
    connect_int: 2
  vms: {}
  # Metrics: each lab host's private /var/lib/pairvm (the machine's own
  # /var/lib/prometheus is not the lab's).
  metrics:
    textfile: /var/lib/pairvm/metrics/pairvm.prom
  # Host setup (pairvm.host): the lab builds its links, installs the packages
  # and starts libvirtd itself; its volume groups sit on loop devices whose
  # names change from run to run, so they are left out here.
  host:
    manage_packages: false
    network:
      apply: false
      admin: {interface: eth0, prefix: 24}
      replication: {interface: eth1, prefix: 24}
      bridge: {ports: [pub0]}
    libvirt:
      manage_service: false
    # /etc/systemd is the machine's own: the boot unit goes to a private path.
    boot:
      unit: /var/lib/pairvm/systemd/pairvm-autostart.service
