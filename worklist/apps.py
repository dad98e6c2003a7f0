from django.apps import AppConfig


class WorklistConfig(AppConfig):
    name = "worklist"
    verbose_name = "Orders and worklist"

    def ready(self) -> None:
        from django.db.models.signals import post_save

        from archive import signals as archive_signals
        from archive.models import DicomNode, Patient

        from . import checks, receivers  # noqa: F401  (registers the system checks)
        from .models import Procedure, Station

        archive_signals.study_received.connect(receivers.on_study_received, dispatch_uid="worklist.study_received")
        archive_signals.instance_stored.connect(receivers.on_instance_stored, dispatch_uid="worklist.instance_stored")
        archive_signals.study_completed.connect(receivers.on_study_completed, dispatch_uid="worklist.study_completed")
        for part in (Patient, DicomNode, Procedure, Station):
            post_save.connect(
                receivers.on_order_part_saved, sender=part, dispatch_uid=f"worklist.order_part_saved.{part.__name__}"
            )
