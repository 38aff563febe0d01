# -*- coding: utf-8 -*-
# vim: ft=sls
# The Debian packages a pairvm host needs (pairvm:host:packages), unless
# pairvm:host:manage_packages is false (the packages are installed otherwise).
# The pairvm module needs the libvirt binding in the Python Salt runs on:
# Debian's python3-libvirt serves a Salt installed from Debian's packages;
# Salt's onedir packages (3006 and later) and a Salt in a virtualenv do not see
# it (saltstack/salt#64291), so there pip builds pairvm:host:libvirt_python
# into the minion's own interpreter (or pairvm:host:salt_python).
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/host/files/settings.jinja' import host with context %}
{%- set salt_python = host.salt_python or grains['pythonexecutable'] %}

{%- if host.manage_packages %}

pairvm-host-packages-installed:
  pkg.installed:
    - pkgs: {{ host.packages | json }}
    # The pairvm modules need tools and the libvirt binding installed here.
    - reload_modules: true
{%-   if not salt_python.startswith('/usr/bin/python3') %}

pairvm-host-packages-libvirt-python-build:
  pkg.installed:
    - pkgs: {{ host.build_packages | json }}

pairvm-host-packages-libvirt-python:
  pip.installed:
    - name: {{ host.libvirt_python | yaml_dquote }}
    - bin_env: {{ salt_python | yaml_dquote }}
    - reload_modules: true
    - require:
      - pkg: pairvm-host-packages-installed
      - pkg: pairvm-host-packages-libvirt-python-build
{%-   endif %}
{%- else %}

pairvm-host-packages-not-managed:
  test.show_notification:
    - text: packages are not managed here (pillar pairvm:host:manage_packages is false)
{%- endif %}
