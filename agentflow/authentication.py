"""Per-run stream tokens as DRF authentication, for the one endpoint that takes them: a run's ``events/``.

Browsers cannot set headers on an ``EventSource`` (nor on a websocket), so the run representation carries a
signed, expiring ``stream_token`` (:mod:`agentflow.access`) that may be passed as ``?token=``. It authorises
reading that run's events and nothing else: it authenticates no user, and only the events view accepts it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AnonymousUser
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from .access import check_stream_token
from .exceptions import InvalidStreamToken


@dataclass(frozen=True)
class StreamGrant:
    """``request.auth`` of a request authorised by a stream token: it may read run ``run_id`` only."""

    run_id: str


def _normalised(run_id: Any) -> str:
    try:
        return str(uuid.UUID(str(run_id)))
    except ValueError:
        return str(run_id)


class StreamTokenAuthentication(BaseAuthentication):
    """``?token=<stream token>`` for the run named by the URL's ``run_id``.

    Without ``token`` it does nothing (the project's authentication classes follow). A token that is invalid,
    expired or for another run is refused (401 ``invalid_stream_token``) even if the request also has a
    session: an explicit credential that does not hold is an error, not something to ignore.
    """

    def authenticate(self, request: Request) -> tuple[Any, StreamGrant] | None:
        token = request.query_params.get("token")
        if not token:
            return None
        run_id = _normalised((request.parser_context or {}).get("kwargs", {}).get("run_id"))
        if not check_stream_token(token, run_id):
            raise InvalidStreamToken()
        return AnonymousUser(), StreamGrant(run_id)

    def authenticate_header(self, request: Request) -> str | None:
        return None  # the project's authenticators name the scheme of the 401


class IsAuthenticatedOrStreamGrant(BasePermission):
    """A logged-in user, or the bearer of the stream token of the run in the URL."""

    def has_permission(self, request: Request, view: Any) -> bool:
        return bool(request.user and request.user.is_authenticated) or isinstance(request.auth, StreamGrant)
