"""Per-run stream tokens as DRF authentication, for the one endpoint that takes them: a run's ``events/``.

The run representation carries a signed, expiring ``stream_token`` (:mod:`agentflow.access`). Clients that can
set headers send it as ``Authorization: Stream <token>``; an ``EventSource`` cannot, so ``?token=<token>`` works
too, at the price of the token landing in access logs (docs/topics/streaming.md). It authorises reading that
run's events and nothing else: it authenticates no user, and only the events view accepts it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AnonymousUser
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from .access import canonical_run_id, check_stream_token
from .exceptions import InvalidStreamToken

#: The scheme of ``Authorization: Stream <token>``.
SCHEME = "Stream"


@dataclass(frozen=True)
class StreamGrant:
    """``request.auth`` of a request authorised by a stream token: it may read run ``run_id`` only."""

    run_id: str


class StreamTokenAuthentication(BaseAuthentication):
    """``Authorization: Stream <token>``, or ``?token=<token>``, for the run named by the URL's ``run_id``.

    Without either it does nothing (the project's authentication classes follow; an ``Authorization`` header
    of another scheme is theirs). A token that is invalid, expired, revoked or for another run is refused (401
    ``invalid_stream_token``) even if the request also has a session: an explicit credential that does not hold
    is an error, not something to ignore.
    """

    def authenticate(self, request: Request) -> tuple[Any, StreamGrant] | None:
        token = self.header_token(request)
        if token is None:
            token = request.query_params.get("token") or None
        if token is None:
            return None
        run_id = canonical_run_id((request.parser_context or {}).get("kwargs", {}).get("run_id"))
        if not check_stream_token(token, run_id):
            raise InvalidStreamToken()
        return AnonymousUser(), StreamGrant(run_id)

    @staticmethod
    def header_token(request: Request) -> str | None:
        parts = get_authorization_header(request).split()
        if not parts or parts[0].decode("latin-1").lower() != SCHEME.lower():
            return None
        if len(parts) != 2:
            raise InvalidStreamToken()  # "Stream" with no token, or with spaces in it
        return parts[1].decode("latin-1")

    def authenticate_header(self, request: Request) -> str | None:
        return None  # the project's authenticators name the scheme of the 401


class IsAuthenticatedOrStreamGrant(BasePermission):
    """A logged-in user, or the bearer of the stream token of the run in the URL."""

    def has_permission(self, request: Request, view: Any) -> bool:
        return bool(request.user and request.user.is_authenticated) or isinstance(request.auth, StreamGrant)
