"""Statistics for administrators: volumes, turnaround, SLA, workload, referrals and edge backlog.

The figures come from summary rows (:mod:`.models`) that the actions keep up
to date as they happen (:mod:`.record`), so a page reads a narrow, indexed
table over its date range and never the archive, worklist or workflow tables.
``manage.py rebuild_statistics`` rebuilds them from those tables.
"""
