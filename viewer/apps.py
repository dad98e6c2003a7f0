from django.apps import AppConfig


class ViewerConfig(AppConfig):
    name = "viewer"

    def ready(self) -> None:
        from workflow.signals import tasks_offered

        from .tasks import on_tasks_offered

        tasks_offered.connect(on_tasks_offered, dispatch_uid="viewer-prefetch-priors")
