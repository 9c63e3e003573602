"""The Celery app of the test workers: `celery -A tests.celery_app worker -Q agentflow,agentflow-monitor`."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

app = Celery("agentflow_tests")
# Configured by the CELERY_* settings of tests/settings.py.
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

if os.environ.get("AGENTFLOW_TEST_BEAT"):
    # A beat process of tests/integration/test_beat.py: it sends only the scheduler's task.
    from agentflow.tasks import beat_schedule

    app.conf.beat_schedule = {"agentflow-schedules": beat_schedule()["agentflow-schedules"]}
