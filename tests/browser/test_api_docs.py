"""/api/docs/ (Swagger UI) and /api/redoc/ render with no network route to anything but the server: their
files come from drf-spectacular-sidecar, not a CDN (and the example's Redoc page loads no web fonts)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.browser.conftest import screenshot

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def only_the_server(context: Any, live: Any) -> list[str]:
    """Abort every request to another host; returns the list of those refused."""
    refused: list[str] = []
    server = urlsplit(live.http).netloc

    def route(request: Any) -> None:
        if urlsplit(request.url).netloc == server:
            request_route.continue_()
        else:
            refused.append(request.url)
            request_route.abort()

    def handler(route_: Any, request: Any) -> None:
        nonlocal request_route
        request_route = route_
        route(request)

    request_route: Any = None
    context.route("**/*", handler)
    return refused


def test_swagger_ui_and_redoc_render_the_operations_offline(context: Any, live: Any) -> None:
    refused = only_the_server(context, live)
    page = context.new_page()
    page.goto(f"{live.http}/api/docs/")
    page.wait_for_selector(".opblock-summary-path")
    paths = set(page.locator(".opblock-summary-path").all_inner_texts())
    assert {"/api/workflows/", "/api/runs/{run_id}/events/", "/api/runs/{run_id}/resume/"} <= paths
    screenshot(page, "api-docs")
    assert refused == []

    page.goto(f"{live.http}/api/redoc/")
    page.wait_for_selector("text=/api/runs/{run_id}/events/")
    # Only Redoc's own footer logo is asked of another host (and refused): the page does not need it.
    assert {urlsplit(url).netloc for url in refused} <= {"cdn.redoc.ly"}
