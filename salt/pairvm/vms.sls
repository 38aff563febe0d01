# -*- coding: utf-8 -*-
# vim: ft=sls
# Every VM in pillar pairvm:vms on this host: storage and config present, and
# running or stopped on its home host. Pillar `pairvm_phase: present` stops
# after the storage (the orchestrate runs that on both hosts first, so the
# peer's Secondary is up before the home host promotes).
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import pairvm with context %}
{%- set phase = salt['pillar.get']('pairvm_phase', 'all') %}

{%- for name, vm in pairvm.vms | dictsort %}

pairvm-vms-{{ name }}-present:
  pairvm.vm_present:
    - name: {{ name }}
{%-   if phase != 'present' %}

pairvm-vms-{{ name }}-{{ vm.get('state', 'running') }}:
  pairvm.vm_{{ vm.get('state', 'running') }}:
    - name: {{ name }}
    - require:
      - pairvm: pairvm-vms-{{ name }}-present
{%-   endif %}
{%- endfor %}
