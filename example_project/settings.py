"""Settings of the example project.

Everything that differs between a laptop and production comes from the environment:
- DATABASE_URL: ``postgres://user@host:port/name``; unset: SQLite in ./var/ (the embedded default).
- REDIS_URL: Redis for the run streams, the Celery broker and the cache; ``python -m example_project``
  starts an embedded Redis when none is reachable.
- OPENAI_API_KEY, OPENAI_BASE_URL: the LLM provider (any OpenAI-compatible API; the base URL defaults to
  OpenAI's). ``python -m example_project`` without a key starts agentflow's fake OpenAI server and points
  both at it. EXAMPLE_LLM_MODEL: the model the blog workflow asks for (default gpt-4o-mini; fake-model with
  the fake server).
"""

import os
from pathlib import Path
from urllib.parse import urlparse

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("AGENTFLOW_VAR_DIR", BASE_DIR / "var"))

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-project-insecure-key-change-me")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")

INSTALLED_APPS = [
    # First, so `runserver` serves ASGI (websockets, server-sent events) as well as the admin's static files.
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    # Before drf_spectacular: its template of the Redoc page (without web fonts) overrides the package's.
    "example_project.web",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    # Swagger UI and Redoc's files served from here, not from a CDN: /api/docs/ works offline.
    "drf_spectacular_sidecar",
    "channels",
    "agentflow",
    "example_project.blog",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "example_project.urls"
WSGI_APPLICATION = "example_project.wsgi.application"
ASGI_APPLICATION = "example_project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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


def _database(url: str | None) -> dict:
    if not url:
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR_DIR / "example.sqlite3",
            # The web process and the worker write at once: WAL and immediate transactions avoid lock errors.
            "OPTIONS": {
                "init_command": "PRAGMA journal_mode=WAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
            },
        }
    parsed = urlparse(url)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parsed.path.lstrip("/"),
        "USER": parsed.username or "",
        "PASSWORD": parsed.password or "",
        "HOST": parsed.hostname or "",
        "PORT": str(parsed.port or ""),
        # Not kept by threads: under ASGI (daphne, uvicorn) each request runs in a thread of its own, and a
        # connection kept by a thread that serves no other request is never reused, only left open. Django's
        # pool (psycopg[pool], in agentflow's postgres extra) reuses them and caps how many a process opens.
        # docs/deploy.md#database-connections
        "CONN_MAX_AGE": 0,
        "OPTIONS": {"pool": {"min_size": 1, "max_size": 10, "timeout": 10}},
    }


DATABASES = {"default": _database(os.environ.get("DATABASE_URL"))}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "example",
    }
}

EXAMPLE_LLM_MODEL = os.environ.get("EXAMPLE_LLM_MODEL") or "gpt-4o-mini"

AGENTFLOW = {
    "REDIS_URL": REDIS_URL,
    "EXECUTOR": os.environ.get("AGENTFLOW_EXECUTOR", "agentflow.executors.CeleryExecutor"),
    # The OpenAI-compatible providers of agentflow.llm's clients, tried in this order on transient failures.
    # Add a second one (another region, another vendor with the same models) to fall back on.
    "LLM_PROVIDERS": [
        {
            "name": "openai",
            "base_url": os.environ.get("OPENAI_BASE_URL") or None,
            "api_key": os.environ.get("OPENAI_API_KEY") or None,
        }
    ],
    # USD per million tokens, for the cost on every step and run (and the runs' budgets). Check your
    # provider's price list: these are examples. The fake server's model is priced like gpt-4o-mini so that
    # the demo shows a cost.
    "LLM_PRICES": {
        "gpt-4o-mini*": {"input": 0.15, "output": 0.60},
        "gpt-4o*": {"input": 2.50, "output": 10.00},
        "gpt-4.1-nano*": {"input": 0.10, "output": 0.40},
        "gpt-4.1-mini*": {"input": 0.40, "output": 1.60},
        "gpt-4.1*": {"input": 2.00, "output": 8.00},
        "fake-model": {"input": 0.15, "output": 0.60},
    },
    # Shared by every worker, per "<provider>:<model>" (a 429's Retry-After blocks the key for all of them).
    "RATE_LIMITS": {"openai:*": {"requests_per_minute": 500, "tokens_per_minute": 200_000}},
}

# Celery: JSON only, acknowledge after the task ran, one message at a time per worker process.
CELERY_BROKER_URL = REDIS_URL
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A worker process keeps its database connection for 100 tasks instead of opening one per task (Celery's
# default): a run's first event comes sooner (docs/deploy.md#database-connections).
CELERY_DB_REUSE_MAX = 100
# A broker that stops answering fails a send in seconds instead of blocking it (agentflow sends it again).
CELERY_BROKER_TRANSPORT_OPTIONS = {"socket_timeout": 10, "socket_connect_timeout": 5}
CELERY_BEAT_SCHEDULE = {
    "agentflow-monitor": {
        "task": "agentflow.monitor",
        "schedule": 5.0,
        "options": {"queue": "agentflow-monitor"},
    }
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.TokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "agentflow example project",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # The schema and its pages (Swagger UI, Redoc) list every workflow and its input: for signed-in users
    # only, as every other endpoint (drf-spectacular's default serves them to anyone).
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    # Each workflow's start operations with that workflow's input as their body.
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "agentflow.openapi.split_start_operations",
    ],
    # Swagger UI and Redoc from drf-spectacular-sidecar's static files, not a CDN: /api/docs/ works offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

LOGIN_URL = "web:login"
LOGIN_REDIRECT_URL = "web:index"
LOGOUT_REDIRECT_URL = "web:login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"

# agentflow's INFO lines go to the root logger's handler, and nowhere else: a handler of its own would print
# each line twice in the Celery worker, which gives the root logger its own handler.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {"agentflow": {"level": os.environ.get("AGENTFLOW_LOG_LEVEL", "INFO")}},
}
