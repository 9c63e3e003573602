"""Settings of the browser tests' ASGI server and worker: the test suite's, plus the example project's web app
and blog workflow, static files (agentflow.js, the admin's CSS, Swagger UI from drf-spectacular-sidecar)
served by the ASGI application itself."""

from tests.settings import *  # noqa: F403
from tests.settings import INSTALLED_APPS, SPECTACULAR_SETTINGS

INSTALLED_APPS = [
    "example_project.web",  # first, as in the example project: its templates override drf_spectacular's
    *INSTALLED_APPS,
    "django.contrib.staticfiles",
    "drf_spectacular_sidecar",
    "example_project.blog",
]
ROOT_URLCONF = "tests.browser.urls"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
STATIC_URL = "/static/"
EXAMPLE_LLM_MODEL = "fake-model"
SPECTACULAR_SETTINGS = {
    **SPECTACULAR_SETTINGS,
    "TITLE": "agentflow browser tests",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}
LOGIN_URL = "web:login"
LOGIN_REDIRECT_URL = "web:index"

# A server error's traceback goes to the server's output, where the tests look for it.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "agentflow": {"handlers": ["console"], "level": "WARNING"},
        "django.request": {"handlers": ["console"], "level": "ERROR"},
    },
}
