"""The benchmark's Celery app: ``celery -A bench.celery_app worker -P solo -Q agentflow,celery``.

The same CELERY_* settings as the test workers (acks late, prefetch 1, JSON), plus a Redis result backend for the
baseline's chain. It defines the baseline's no-op task; importing it also registers the bench workflow (which
agentflow's autodiscovery of ``bench.workflows`` does as well once Django is set up).

``BENCH_PATCH=module`` (importable from PYTHONPATH) is imported in the worker once it is ready (Django set
up), and by bench/step_overhead.py in the client: a way to A/B-test an engine change without editing it.
"""

import importlib
import os

from celery import Celery
from celery.signals import worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

app = Celery("agentflow_bench")
# The CELERY_* settings come from tests/settings.py through bench/settings.py.
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(result_expires=600)
app.set_default()
app.autodiscover_tasks(["agentflow"])


@app.task(name="bench.noop")
def noop(value=0):
    return value


from . import workflows  # noqa: E402,F401  (registers bench-noop-steps)


@worker_ready.connect
def _import_bench_patch(**kwargs):
    name = os.environ.get("BENCH_PATCH")
    if name:
        importlib.import_module(name)
