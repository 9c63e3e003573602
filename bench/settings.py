"""Django settings of the step-overhead benchmark: the test settings, on a database and Redis db of its own.

Environment overrides: BENCH_DB_NAME (default ``agentflow_bench``; created if missing), BENCH_REDIS_URL
(default ``redis://127.0.0.1:6379/14``: broker, result backend, agentflow streams and cache all live there,
under their own keys) and the PGHOST/PGPORT/PGUSER of tests.settings. The benchmarks delete keys there by
pattern, so they refuse a database that holds keys but not their mark (``bench.claim_redis``).
"""

import os

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES, INSTALLED_APPS

BENCH_DB_NAME = os.environ.get("BENCH_DB_NAME", "agentflow_bench")
BENCH_REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
BENCH_KEY_PREFIX = "agentflow-bench:"

# The test settings' apps without the test workflows; agentflow's autodiscovery imports bench/workflows.py.
INSTALLED_APPS = [app for app in INSTALLED_APPS if app != "tests.testapp"] + ["bench"]

DATABASES = {"default": {**DATABASES["default"], "NAME": BENCH_DB_NAME}}
DATABASES["default"].pop("TEST", None)

# bench/start_latency.py calls the REST API of a local uvicorn process.
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

REDIS_URL = BENCH_REDIS_URL
CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": BENCH_REDIS_URL,
        "KEY_PREFIX": "agentflow-bench-cache",
    }
}

AGENTFLOW = {
    "REDIS_URL": BENCH_REDIS_URL,
    "KEY_PREFIX": BENCH_KEY_PREFIX,
    "EXECUTOR": "agentflow.executors.CeleryExecutor",
}

CELERY_BROKER_URL = BENCH_REDIS_URL
CELERY_RESULT_BACKEND = BENCH_REDIS_URL

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}

# bench/start_latency.py --connections kept (its default) sets both: the deployment docs/deploy.md recommends
# (the ASGI server on Django's connection pool; Celery's prefork children keeping their connection between
# tasks). The other benchmarks run with neither, as Django and Celery do by default.
if os.environ.get("BENCH_DB_POOL", "") not in ("", "0"):
    DATABASES["default"]["OPTIONS"] = {"pool": {"min_size": 2, "max_size": 20, "timeout": 10}}
if os.environ.get("BENCH_DB_REUSE", "") not in ("", "0"):
    CELERY_DB_REUSE_MAX = 100
