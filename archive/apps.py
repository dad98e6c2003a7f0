from django.apps import AppConfig


class ArchiveConfig(AppConfig):
    name = "archive"
    verbose_name = "Archive"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_save

        from pacs_cloud import authcache

        from . import checks  # noqa: F401 (registers the system checks)
        from .copies import tasks as copy_tasks  # noqa: F401 (registers the copies' Celery tasks)
        from .models import StudyGroupObjectPermission, StudyUserObjectPermission

        # A grant given or taken away ends the searches' memo of grants at once.
        for model in (StudyUserObjectPermission, StudyGroupObjectPermission):
            post_save.connect(authcache.forget, sender=model, dispatch_uid=f"authcache-save-{model.__name__}")
            post_delete.connect(authcache.forget, sender=model, dispatch_uid=f"authcache-delete-{model.__name__}")
