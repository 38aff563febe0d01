# -*- coding: utf-8 -*-
# vim: ft=sls
# Metrics (pillar pairvm:metrics; README "Monitoring"): a job of the
# minion's scheduler writes this host's metrics for node_exporter's textfile
# collector every `interval` seconds (pairvm.write_metrics: temporary name,
# then rename), and, when pillar names a carbon receiver, another sends them
# to Graphite (pairvm.graphite_stats). pairvm.metrics_settings checks the
# pillar first. On a bare host's first highstate the pairvm module cannot
# load yet (no libvirt binding): the jobs come with the next state run.
{#- Masterless (salt-call --local): no minion daemon to tell; the job goes
    straight into the minion's schedule file. #}
{%- set offline = opts.get('file_client') == 'local' %}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import pairvm with context %}

{%- if 'pairvm.metrics_settings' not in salt %}

pairvm-host-metrics-later:
  test.show_notification:
    - text: the pairvm module does not load yet (libvirt binding); apply pairvm.host.metrics again
{%- else %}
{%- set metrics = salt['pairvm.metrics_settings'](pairvm.metrics) %}

{%- if metrics.interval %}

pairvm-host-metrics-textfile-dir:
  file.directory:
    - name: {{ salt['file.dirname'](metrics.textfile) | json }}
    - makedirs: true
    - mode: '0755'

pairvm-host-metrics-schedule:
  schedule.present:
    - name: pairvm-metrics
    - function: pairvm.write_metrics
    - job_kwargs:
        path: {{ metrics.textfile | json }}
    - seconds: {{ metrics.interval }}
    - maxrunning: 1
    - return_job: false
    - offline: {{ offline }}
    - require:
      - file: pairvm-host-metrics-textfile-dir
{%- else %}

pairvm-host-metrics-schedule:
  schedule.absent:
    - name: pairvm-metrics
    - offline: {{ offline }}
{%- endif %}

{%- if metrics.graphite.carbon %}

pairvm-host-metrics-graphite-schedule:
  schedule.present:
    - name: pairvm-graphite
    - function: pairvm.graphite_stats
    - job_kwargs:
        prefix: {{ metrics.graphite.prefix | json }}
        carbon: {{ metrics.graphite.carbon | json }}
    - seconds: {{ metrics.graphite.interval }}
    - maxrunning: 1
    - return_job: false
    - offline: {{ offline }}
{%- else %}

pairvm-host-metrics-graphite-schedule:
  schedule.absent:
    - name: pairvm-graphite
    - offline: {{ offline }}
{%- endif %}
{%- endif %}
