# -*- coding: utf-8 -*-
# vim: ft=sls
# SSH trust between the pair's admin addresses, for migration and backups:
# root's key pair here, published in the Salt mine as `pairvm_ssh` (readable
# by the pair only); the peer's public key authorized from its admin address
# only, and its host key in known_hosts. The peer's keys come from the mine
# (or pairvm:host:ssh:peer_keys): when the peer has not published yet, this
# run says so, and applying pairvm.host on the peer and then here again
# completes the trust.
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/host/files/settings.jinja' import pairvm, host, me, peer, in_pair with context %}
{%- set ssh = host.ssh %}

include:
  - .packages

pairvm-host-ssh-dir:
  file.directory:
    - name: {{ salt['file.dirname'](ssh.key_file) }}
    - user: root
    - group: root
    - mode: '0700'

pairvm-host-ssh-keypair:
  pairvm_host.ssh_keypair:
    - name: {{ ssh.key_file }}
    - comment: root@{{ me }}
    - require:
      - file: pairvm-host-ssh-dir
      - sls: {{ tplroot }}.host.packages

pairvm-host-ssh-publish:
  pairvm_host.mine_published:
    - name: pairvm_ssh
    - function: pairvm_host.ssh_identity
    - function_args:
        key_file: {{ ssh.key_file }}
        host_key_file: {{ ssh.host_key }}
    - allow_tgt: {{ pairvm.pair | list | json }}
    - allow_tgt_type: list
    - require:
      - pairvm_host: pairvm-host-ssh-keypair
{%- if in_pair and peer %}
{%-   set peer_ip = pairvm.pair[peer].admin_ip %}
{%-   set keys = (ssh.peer_keys or {}).get(peer) or (salt['mine.get'](peer, 'pairvm_ssh') or {}).get(peer) %}
{%-   set keys = keys if keys is mapping else {} %}
{%-   set user_key, peer_host_key = keys.get('user_key'), keys.get('host_key') %}
{%-   if user_key %}

pairvm-host-ssh-authorize-peer:
  pairvm_host.peer_key_authorized:
    - name: {{ ssh.authorized_keys }}
    - line: {{ salt['pairvm_host.authorized_key_line'](user_key, peer_ip, ssh.key_options) | yaml_dquote }}
    - require:
      - file: pairvm-host-ssh-dir
{%-   endif %}
{%-   if peer_host_key %}
{%-     set host_key = salt['pairvm_host.public_key'](peer_host_key) %}

pairvm-host-ssh-known-peer:
  ssh_known_hosts.present:
    - name: {{ peer_ip }}
    - user: root
    - enc: {{ host_key.type }}
    - key: {{ host_key.key }}
    - config: {{ ssh.known_hosts }}
    - require:
      - file: pairvm-host-ssh-dir
{%-   endif %}
{%-   if not (user_key and peer_host_key) %}

pairvm-host-ssh-peer-pending:
  test.show_notification:
    - text: >-
        SSH trust with {{ peer }} is not complete: {{ peer }} has not published its
        keys (mine entry pairvm_ssh) yet. Apply pairvm.host on {{ peer }}, then here again.
{%-   endif %}
{%- endif %}
