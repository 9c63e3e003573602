# The Celery app is loaded with the settings, as in any Django project, so shared tasks use it.
from .celery_app import app as celery_app

__all__ = ["celery_app"]
