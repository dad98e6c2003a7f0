from django.apps import AppConfig


class PacsCloudConfig(AppConfig):
    name = "pacs_cloud"
    verbose_name = "Cloud PACS platform"

    def ready(self) -> None:
        from . import checks, signals  # noqa: F401  (registers checks and receivers)
