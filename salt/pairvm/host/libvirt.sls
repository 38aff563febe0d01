# -*- coding: utf-8 -*-
# vim: ft=sls
# libvirt: VNC consoles listen on 127.0.0.1 only, and libvirt never autostarts
# a pairvm VM (pairvm decides where a VM runs: `pairvm autostart`).
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/host/files/settings.jinja' import pairvm, host with context %}

include:
  - .packages

pairvm-host-libvirt-vnc-listen:
  file.replace:
    - name: /etc/libvirt/qemu.conf
    - pattern: '^[ \t]*vnc_listen[ \t]*=.*$'
    - repl: 'vnc_listen = "127.0.0.1"'
    - append_if_not_found: true
    - require:
      - sls: {{ tplroot }}.host.packages

pairvm-host-libvirt-no-autostart:
  pairvm_host.autostart_disabled:
    - name: /etc/libvirt/qemu/autostart
    - vms: {{ pairvm.vms | list | json }}
    - uri: {{ pairvm.libvirt_uri | yaml_dquote }}
    - require:
      - sls: {{ tplroot }}.host.packages
{%- if host.libvirt.manage_service %}

pairvm-host-libvirt-service:
  service.running:
    - name: {{ host.libvirt.service }}
    - enable: true
    - watch:
      - file: pairvm-host-libvirt-vnc-listen
{%- endif %}
