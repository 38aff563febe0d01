# -*- coding: utf-8 -*-
# vim: ft=sls
# /machines/_global and the host command `pairvm` (pairvm.config), and the
# command's bash completion, rendered from the command's own table
# (pairvmlib.commands): command names, their flags and words, and the VMs of
# /machines for the commands that take one.
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/host/files/settings.jinja' import host with context %}

include:
  - {{ tplroot }}.config

pairvm-host-config-bash-completion:
  file.managed:
    - name: {{ host.completion.path | yaml_dquote }}
    - source: salt://{{ tplroot }}/files/pairvm.bash-completion
    - template: jinja
    - context:
        spec: {{ salt['pairvm_host.commands']() | json }}
    - user: root
    - group: root
    - mode: '0644'
    - makedirs: true
