# -*- coding: utf-8 -*-
# vim: ft=sls
# The systemd unit that runs `pairvm autostart` at boot once libvirtd and the
# network are up (pillar pairvm:host:boot), so that a rebooted host brings
# its VMs back while the master is down. Enabled by the link systemctl enable
# makes (multi-user.target.wants); systemd reloads where it runs.
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/host/files/settings.jinja' import pairvm, host with context %}
{%- set unit = host.boot.unit %}
{%- set unit_dir = salt['file.dirname'](unit) %}
{%- set wants = unit_dir ~ '/multi-user.target.wants/' ~ salt['file.basename'](unit) %}

pairvm-host-boot-unit:
  file.managed:
    - name: {{ unit | yaml_dquote }}
    - source: salt://{{ tplroot }}/host/files/pairvm-autostart.service
    - template: jinja
    - context:
        cli_path: {{ pairvm.cli.path | json }}
    - user: root
    - group: root
    - mode: '0644'
    - makedirs: true

{%- if host.boot.enable %}

pairvm-host-boot-enabled:
  file.symlink:
    - name: {{ wants | yaml_dquote }}
    - target: {{ unit | yaml_dquote }}
    - makedirs: true
    - require:
      - file: pairvm-host-boot-unit
{%- else %}

pairvm-host-boot-enabled:
  file.absent:
    - name: {{ wants | yaml_dquote }}
{%- endif %}

pairvm-host-boot-daemon-reload:
  cmd.run:
    - name: systemctl daemon-reload
    - onlyif: test -d /run/systemd/system
    - onchanges:
      - file: pairvm-host-boot-unit
