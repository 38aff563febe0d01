# -*- coding: utf-8 -*-
# vim: ft=sls
# /machines/_global and the host command `pairvm` (pairvm.config), and the
# command's bash completion: command names, and the VMs of /machines for the
# commands that take one.
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/host/files/settings.jinja' import pairvm, host with context %}

include:
  - {{ tplroot }}.config

pairvm-host-config-bash-completion:
  file.managed:
    - name: {{ host.completion.path }}
    - source: salt://{{ tplroot }}/files/pairvm.bash-completion
    - template: jinja
    - context:
        machines_dir: {{ pairvm.machines_dir | json }}
    - user: root
    - group: root
    - mode: '0644'
    - makedirs: true
