"""Who may see a run, and the per-run stream tokens browsers use where they cannot set headers.

A run belongs to its owner; staff see every run. A run started without an owner (from Python, say) is
visible to staff only. A stream token is a signed, expiring capability for one run: it authorises reading
that run's events (``?token=`` on ``events/`` and on the websocket) and nothing else.
"""

from __future__ import annotations

from typing import Any

from django.core import signing
from django.db.models import QuerySet

from .conf import agentflow_settings
from .models import WorkflowRun

_SALT = "agentflow.stream-token"


def visible_runs(user: Any) -> QuerySet[WorkflowRun]:
    """The runs ``user`` may see."""
    if user is None or not user.is_authenticated:
        return WorkflowRun.objects.none()
    if user.is_staff:
        return WorkflowRun.objects.all()
    return WorkflowRun.objects.filter(owner_id=user.pk)


def can_view(user: Any, run: WorkflowRun) -> bool:
    if user is None or not user.is_authenticated:
        return False
    return bool(user.is_staff or (run.owner_id is not None and run.owner_id == user.pk))


def make_stream_token(run_id: Any) -> str:
    """A token that lets its bearer read the events of run ``run_id`` for ``STREAM_TOKEN_TTL_SECONDS``."""
    return signing.dumps({"run": str(run_id)}, salt=_SALT, compress=False)


def check_stream_token(token: str, run_id: Any) -> bool:
    """Whether ``token`` is a valid, unexpired stream token for exactly this run."""
    if not isinstance(token, str) or not token or len(token) > 500:
        return False
    try:
        payload = signing.loads(token, salt=_SALT, max_age=agentflow_settings.stream_token_ttl_seconds)
    except signing.BadSignature:  # includes SignatureExpired
        return False
    return isinstance(payload, dict) and payload.get("run") == str(run_id)
