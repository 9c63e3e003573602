"""The Celery app of the test workers: `celery -A tests.celery_app worker -Q agentflow,agentflow-monitor`."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

app = Celery("agentflow_tests")
# Configured by the CELERY_* settings of tests/settings.py.
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
