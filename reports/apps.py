from django.apps import AppConfig


class ReportsConfig(AppConfig):
    name = "reports"

    def ready(self) -> None:
        from . import checks  # noqa: F401 (registers the system checks)
        from .exit import tasks as exit_tasks  # noqa: F401 (registers the exit's Celery task)
