from django.apps import AppConfig


class WorklistConfig(AppConfig):
    name = "worklist"
    verbose_name = "Orders and worklist"

    def ready(self) -> None:
        from archive import signals as archive_signals

        from . import checks, receivers  # noqa: F401  (registers the system checks)

        archive_signals.study_received.connect(receivers.on_study_received, dispatch_uid="worklist.study_received")
        archive_signals.instance_stored.connect(receivers.on_instance_stored, dispatch_uid="worklist.instance_stored")
        archive_signals.study_completed.connect(receivers.on_study_completed, dispatch_uid="worklist.study_completed")
