"""The Django-free engine: components, workflows, steps, retries and events.

Nothing in this package imports Django, Celery or redis-py, so it can be unit tested with the
in-memory backends of :mod:`agentflow.core.memory`.
"""
