# -*- coding: utf-8 -*-
# vim: ft=sls
# The Debian packages a pairvm host needs (pairvm:host:packages), unless
# pairvm:host:manage_packages is false (the packages are installed otherwise).
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/host/files/settings.jinja' import host with context %}

{%- if host.manage_packages %}

pairvm-host-packages-installed:
  pkg.installed:
    - pkgs: {{ host.packages | json }}
    # The pairvm modules need tools and the libvirt binding installed here.
    - reload_modules: true
{%- else %}

pairvm-host-packages-not-managed:
  test.show_notification:
    - text: packages are not managed here (pillar pairvm:host:manage_packages is false)
{%- endif %}
