"""Events the archive announces to the apps above it.

Receivers connect in their ``AppConfig.ready()``; each signal is sent after the
transaction that caused it has committed.
"""

from django.dispatch import Signal

# A stored instance opened a study the archive had not seen. kwargs: study
study_received = Signal()

# An instance was stored and indexed. kwargs: instance, created (False for an
# identical re-send), series_instance_uid (when created)
instance_stored = Signal()

# A study became complete (stability window passed or MPPS completed). kwargs: study
study_completed = Signal()
