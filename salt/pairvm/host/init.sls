# -*- coding: utf-8 -*-
# vim: ft=sls
# Host setup of a pairvm host (the old first_time_setup), from pillar
# pairvm:host (docs/host-pillar.md): packages, network, volume groups, DRBD's
# common configuration, libvirt, SSH trust with the peer, the host command,
# the backup and metrics schedules, the DRBD beacon, the boot unit.
include:
  - .packages
  - .network
  - .storage
  - .drbd
  - .libvirt
  - .ssh
  - .config
  - .backup
  - .metrics
  - .watch
  - .boot
