"""The Celery application shared by the web server, the DICOM services and the worker."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pacs_cloud.settings")

app = Celery("pacs_cloud")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
