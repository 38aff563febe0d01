# -*- coding: utf-8 -*-
# vim: ft=sls
# The admin and replication interfaces, VLANs and the VM bridge, written as
# ifupdown configuration (pairvm:host:network:file) that `ifup --no-act`
# must accept before it replaces the old file; then, when
# pairvm:host:network:apply is true, ifup of the interfaces not yet up.
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/host/files/settings.jinja' import pairvm, host, me, in_pair with context %}
{%- set net = host.network %}

include:
  - .packages

{%- if in_pair and (net.admin or net.replication or net.bridge or net.vlans) %}
{%-   set args = [net, pairvm.pair[me].admin_ip, pairvm.pair[me].replication_ip, pairvm.bridge] %}

pairvm-host-network-interfaces:
  file.managed:
    - name: {{ net.file }}
    - contents: {{ salt['pairvm_host.interfaces'](*args) | yaml_dquote }}
    - user: root
    - group: root
    - mode: '0644'
    - makedirs: true
    # ifupdown parses the new text and checks each method's required options;
    # a private state dir makes it consider every interface (nothing is run).
    - check_cmd: ifup --no-act --state-dir=/run/pairvm-ifupdown-check -a -i
    - require:
      - sls: {{ tplroot }}.host.packages
{%-   if net.apply %}

pairvm-host-network-up:
  pairvm_host.interfaces_up:
    - name: {{ net.file }}
    - interfaces: {{ salt['pairvm_host.interface_names'](*args) | json }}
    - require:
      - file: pairvm-host-network-interfaces
{%-   endif %}
{%- endif %}
