"""Events the reading workflow announces to the apps above it.

Receivers connect in their ``AppConfig.ready()``; each signal is sent after the
transaction that caused it has committed.
"""

from django.dispatch import Signal

# Reading tasks were offered (first offer, release, escalation, reassignment).
# kwargs: task_ids (list of ReadingTask primary keys), study_ids (their studies)
tasks_offered = Signal()
