"""Settings for agentflow's own test suite: PostgreSQL and Redis from the environment (CI has both)."""

import json
import os
from typing import Any

from tests.redisdb import redis_url_for_tests

SECRET_KEY = "agentflow-tests-not-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "tests.urls"
ASGI_APPLICATION = "tests.asgi.application"
STATIC_URL = "/static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "channels",
    "agentflow",
    "tests.testapp",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASE_URL = os.environ.get("AGENTFLOW_TEST_DATABASE", "postgres")
DATABASES: dict[str, dict[str, Any]]
if DATABASE_URL == "sqlite":
    DATABASES = {
        "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ.get("AGENTFLOW_SQLITE", "")}
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "HOST": os.environ.get("PGHOST", "127.0.0.1"),
            "PORT": os.environ.get("PGPORT", "5432"),
            "USER": os.environ.get("PGUSER", "root"),
            "NAME": os.environ.get("PGDATABASE", "test"),
            "TEST": {"NAME": os.environ.get("AGENTFLOW_TEST_DB_NAME", "test_agentflow")},
        }
    }

# The suite's own Redis database, never $REDIS_URL (the example project's and yours): see tests/redisdb.py.
REDIS_URL = redis_url_for_tests()

CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "agentflow-tests",
    }
}

AGENTFLOW = {
    "REDIS_URL": REDIS_URL,
    "KEY_PREFIX": "agentflow-tests:",
    "EXECUTOR": "agentflow.executors.CeleryExecutor",
    # Short leases so the crash tests see a dead worker's run recovered within seconds.
    "HEARTBEAT_INTERVAL_SECONDS": 0.5,
    "LEASE_SECONDS": 2.0,
    "STREAM_TTL_SECONDS": 600,
}
# A test can start a worker with other AGENTFLOW settings: Worker(..., env={"AGENTFLOW_TEST_OVERRIDES": json}).
AGENTFLOW.update(json.loads(os.environ.get("AGENTFLOW_TEST_OVERRIDES") or "{}"))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "agentflow": {"handlers": ["console"], "level": os.environ.get("AGENTFLOW_LOG_LEVEL", "WARNING")}
    },
}

# The test Redis, unless a test points a server or a worker at a broker of its own (for an outage).
CELERY_BROKER_URL = os.environ.get("AGENTFLOW_TEST_BROKER_URL") or REDIS_URL
# As production should: a broker that stops answering fails a publish in seconds instead of blocking it.
CELERY_BROKER_TRANSPORT_OPTIONS = {"socket_timeout": 10, "socket_connect_timeout": 5}
# As production should run: JSON only, acknowledge after the task ran, one message at a time per process.
# bench/settings.py imports these too.
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.TokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
# As docs/topics/rest-api.md recommends: one start operation per workflow, and no schema of the schema view.
SPECTACULAR_SETTINGS = {
    "SERVE_INCLUDE_SCHEMA": False,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "agentflow.openapi.split_start_operations",
    ],
}
