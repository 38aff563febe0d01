# -*- coding: utf-8 -*-
# vim: ft=sls
# The volume groups (pairvm:host:volume_groups, e.g. here: [/dev/sdb]) on
# their physical volumes. A device holding data (filesystem or other
# signature, partition table, PV of another VG) is never touched: the guard
# fails naming the device and what is on it, and nothing after it runs.
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/host/files/settings.jinja' import pairvm, host with context %}

include:
  - .packages

{%- set seen = {} %}
{%- for vg, devices in (host.volume_groups or {}) | dictsort %}
{%-   set check = namespace(problem=none) %}
{%-   if vg not in pairvm.volume_groups %}
{%-     set check.problem = 'is not one of pairvm:volume_groups (' ~ pairvm.volume_groups | join(', ') ~ ')' %}
{%-   elif devices is string or devices is not sequence or devices | length == 0 %}
{%-     set check.problem = 'needs a non-empty list of devices, e.g. [/dev/sdb]' %}
{%-   else %}
{%-     for device in devices %}
{%-       if device in seen %}
{%-         set check.problem = 'lists ' ~ device ~ ', which is also listed for ' ~ seen[device] %}
{%-       endif %}
{%-       do seen.update({device: vg}) %}
{%-     endfor %}
{%-   endif %}
{%-   if check.problem %}

{{ ("pairvm-host-storage-" ~ vg ~ "-invalid") | yaml_dquote }}:
  test.fail_without_changes:
    - name: {{ ("pillar pairvm:host:volume_groups:" ~ vg ~ " " ~ check.problem) | yaml_dquote }}
{%-   else %}

pairvm-host-storage-{{ vg }}-devices-usable:
  pairvm_host.pvs_usable:
    - name: {{ vg | yaml_dquote }}
    - devices: {{ devices | json }}
    - require:
      - sls: {{ tplroot }}.host.packages
{%-     for device in devices %}

pairvm-host-storage-{{ vg }}-pv-{{ device | replace('/dev/', '') | replace('/', '-') }}:
  lvm.pv_present:
    - name: {{ device | yaml_dquote }}
    # -qq instead of --yes: pvcreate itself refuses to wipe a signature too.
    - force: false
    - require:
      - pairvm_host: pairvm-host-storage-{{ vg }}-devices-usable
    - require_in:
      - lvm: pairvm-host-storage-{{ vg }}-vg
{%-     endfor %}

pairvm-host-storage-{{ vg }}-vg:
  lvm.vg_present:
    - name: {{ vg | yaml_dquote }}
    - devices: {{ devices | json }}
    - require:
      - pairvm_host: pairvm-host-storage-{{ vg }}-devices-usable
{%-   endif %}
{%- endfor %}
