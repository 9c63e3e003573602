"""Fixtures of the REST API tests: users, API clients, and runs recorded straight in the database."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth.models import User
from django.test import AsyncClient
from django.urls import reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from agentflow.models import WorkflowRun


# Users without passwords (hashing one is slow); session tests log in with force_login, which makes a real
# session cookie.
@pytest.fixture
def alice(db: None) -> User:
    return User.objects.create_user("alice")


@pytest.fixture
def bob(db: None) -> User:
    return User.objects.create_user("bob")


@pytest.fixture
def staff(db: None) -> User:
    return User.objects.create_user("root", is_staff=True)


@pytest.fixture
def client_for() -> Callable[[User | None], APIClient]:
    def make(user: User | None) -> APIClient:
        client = APIClient()
        if user is not None:
            client.force_authenticate(user)
        return client

    return make


@pytest.fixture
def api(client_for: Callable[[User | None], APIClient], alice: User) -> APIClient:
    """Alice's client."""
    return client_for(alice)


@pytest.fixture
def anonymous() -> APIClient:
    return APIClient()


class AsgiClient:
    """Requests through Django's ASGI handler (its AsyncClient), from sync tests, with an API token.

    Event streams need ASGI: through the test client's WSGI handler they answer 501 ``asgi_required``, as
    under a WSGI server. Headers go in ``headers={...}``.
    """

    def __init__(self, token: str | None) -> None:
        self._client = AsyncClient()
        # Per request: AsyncClient(headers=...) stores them under WSGI names, which its ASGI scope ignores.
        self._auth = {"Authorization": f"Token {token}"} if token else {}

    def get(self, path: str, data: Any = None, *, headers: dict[str, str] | None = None) -> Any:
        return async_to_sync(self._client.get)(path, data, headers={**self._auth, **(headers or {})})

    def post(self, path: str, data: Any, *, headers: dict[str, str] | None = None) -> Any:
        return async_to_sync(self._client.post)(
            path, json.dumps(data), content_type="application/json", headers={**self._auth, **(headers or {})}
        )


@pytest.fixture
def asgi_for(db: None) -> Callable[[User | None], AsgiClient]:
    def make(user: User | None) -> AsgiClient:
        return AsgiClient(Token.objects.get_or_create(user=user)[0].key if user is not None else None)

    return make


@pytest.fixture
def make_run(db: None) -> Callable[..., WorkflowRun]:
    def make(owner: User | None, workflow: str = "api-echo", **fields: Any) -> WorkflowRun:
        fields.setdefault("input", {"text": "hi", "times": 1, "labels": None})
        return WorkflowRun.objects.create(workflow=workflow, owner=owner, **fields)

    return make


def url(name: str, *args: Any) -> str:
    return reverse(f"agentflow:{name}", args=args)


def start_url(workflow: str) -> str:
    return url("workflow-start", workflow)


def run_url(workflow: str) -> str:
    return url("workflow-run", workflow)
