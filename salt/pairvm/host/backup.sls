# -*- coding: utf-8 -*-
# vim: ft=sls
# Scheduled backups (pillar pairvm:backup:schedule) as jobs of the minion's
# own scheduler: job pairvm-backup-<id> calls pairvm.backup at the job's cron
# time on both hosts; each host backs up the VMs it should (the replicas of
# the VMs its peer runs, and its own stopped ones). Jobs of ids no longer in
# pillar are removed. pairvm_host.backup_settings validates the pillar first.
{%- set jobs = salt['pairvm_host.backup_settings']().schedule %}
{%- set present = salt['schedule.list'](return_yaml=False) or {} %}

{%- for job_id, job in jobs | dictsort %}

pairvm-host-backup-schedule-{{ job_id }}:
  schedule.present:
    - name: pairvm-backup-{{ job_id }}
    - function: pairvm.backup
    - job_kwargs:
        name: {{ job.name | json }}
        destination: {{ job.destination | json }}
        speed: {{ job.speed }}
        compress: {{ job.compress | json }}
    - cron: {{ job.cron | json }}
    - maxrunning: 1
{%- endfor %}

{%- for name in present | sort if name.startswith('pairvm-backup-') and name[14:] not in jobs %}

pairvm-host-backup-schedule-remove-{{ name[14:] }}:
  schedule.absent:
    - name: {{ name }}
{%- endfor %}
