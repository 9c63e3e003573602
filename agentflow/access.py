"""Who may see a run, and the per-run stream tokens for clients that have no session or API token.

A run belongs to its owner; staff see every run. A run started without an owner (from Python, say) is
visible to staff only.

A stream token is a signed, expiring capability for one run: it authorises reading that run's events (on
``events/`` and on the websocket) and nothing else. It is bound to the run's owner and to the run's token
generation, so a change of owner, or :func:`revoke_stream_tokens`, refuses every token made before; the next
run representation carries a new one. Its characters are those of an HTTP token (letters, digits, ``-_.``), so
it can travel as a websocket subprotocol or in a header as well as in a query string. docs/topics/streaming.md
says which way to prefer, and why.
"""

from __future__ import annotations

import hmac
import uuid
from typing import Any

from django.core import signing
from django.core.exceptions import ValidationError
from django.db.models import F, QuerySet
from django.utils.crypto import salted_hmac

from .conf import agentflow_settings
from .models import WorkflowRun

_SALT = "agentflow.stream-token"
#: Not Django's ":" (the default), which a websocket subprotocol may not contain.
_SEPARATOR = "."
#: Longer strings are not tokens of ours (they are about 140 characters); no need to check a signature.
_MAX_TOKEN_LENGTH = 500


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


def make_stream_token(run: WorkflowRun | Any) -> str:
    """A token that lets its bearer read the events of ``run`` (a run, or its id: then it is looked up) for
    ``STREAM_TOKEN_TTL_SECONDS``, until the run changes owner or its tokens are revoked."""
    run_id, binding = _binding_of(run)
    return _signer().sign_object({"run": run_id, "b": binding}, compress=False)


def check_stream_token(token: str, run: WorkflowRun | Any) -> bool:
    """Whether ``token`` is a valid, unexpired stream token for exactly this run (a run, or its id).

    For a run that does not exist, only the signature, the expiry and the id are checked: the caller answers
    that there is no such run.
    """
    if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN_LENGTH:
        return False
    try:
        payload = _signer().unsign_object(token, max_age=agentflow_settings.stream_token_ttl_seconds)
    except signing.BadSignature:  # includes SignatureExpired
        return False
    run_id, binding = _binding_of(run)
    if not isinstance(payload, dict) or payload.get("run") != run_id:
        return False
    return binding is None or hmac.compare_digest(str(payload.get("b")), binding)


def revoke_stream_tokens(run: WorkflowRun | Any) -> None:
    """Refuse from now on every stream token made so far for ``run`` (a run, or its id).

    Connections opened before stay open until they end: a token is checked when a stream starts, and each
    reconnection is a start. Tokens made afterwards (the run's representation carries one) are valid.
    """
    pk = run.pk if isinstance(run, WorkflowRun) else run
    WorkflowRun.objects.filter(pk=pk).update(stream_token_generation=F("stream_token_generation") + 1)
    if isinstance(run, WorkflowRun):
        run.refresh_from_db(fields=["stream_token_generation"])


def canonical_run_id(run_id: Any) -> str:
    """A run id as the tokens and the stream keys spell it: a UUID's lowercase, hyphenated form."""
    try:
        return str(uuid.UUID(str(run_id)))
    except ValueError:
        return str(run_id)


def _signer() -> signing.TimestampSigner:
    return signing.TimestampSigner(salt=_SALT, sep=_SEPARATOR)


def _binding_of(run: WorkflowRun | Any) -> tuple[str, str | None]:
    """The run's canonical id, and what its tokens are bound to (None if there is no such run)."""
    if isinstance(run, WorkflowRun):
        return str(run.pk), _binding(run.owner_id, run.stream_token_generation)
    run_id = canonical_run_id(run)
    try:
        row = WorkflowRun.objects.filter(pk=run_id).values_list("owner_id", "stream_token_generation").first()
    except ValidationError:  # not a UUID: no run has it
        row = None
    return run_id, _binding(*row) if row is not None else None


def _binding(owner_id: Any, generation: int) -> str:
    # Hashed, because a token's payload is signed but readable: the bearer learns no user id.
    return salted_hmac(f"{_SALT}.binding", f"{owner_id}:{generation}", algorithm="sha256").hexdigest()[:24]
