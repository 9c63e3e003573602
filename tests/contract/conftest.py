"""The contract tests' server: uvicorn serving tests.contract.settings (this package's workflows, executed in
the server's own threads), against the test database, with a user and an API token to call it."""

from __future__ import annotations

import resource
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import AsgiServer

# A bound on the server's address space: a regression that lets input through unchecked (as Annotated
# constraints once were: a run computing "ab" * 547818257) must fail these tests, not take the machine down.
MEMORY_LIMIT_BYTES = 4 * 2**30


class ContractServer(AsgiServer):
    def __init__(self, db_name: str) -> None:
        super().__init__(db_name, "tests.contract.settings", "/api/schema/")
        resource.prlimit(self.pid, resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))

    def errors_since(self, start: int) -> list[str]:
        time.sleep(0.05)  # let the log reader catch up with the last lines
        return [line for line in self.log[start:] if "Traceback" in line or "ERROR" in line]


@pytest.fixture(scope="session")
def contract_server(django_db_setup: None, redis_client) -> Iterator[ContractServer]:
    from django.db import connection

    server = ContractServer(connection.settings_dict["NAME"])
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@pytest.fixture
def token(transactional_db: None) -> str:
    """An API token of a new user (committed: the server sees it)."""
    from django.contrib.auth.models import User
    from rest_framework.authtoken.models import Token

    user = User.objects.create_user(f"contract-{uuid.uuid4().hex[:8]}")
    return Token.objects.create(user=user).key


@pytest.fixture(autouse=True)
def _no_server_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test whose requests made the server log an error (a traceback, a 500)."""
    if "contract_server" not in request.fixturenames:
        yield
        return
    server: ContractServer = request.getfixturevalue("contract_server")
    start = len(server.log)
    yield
    errors = server.errors_since(start)
    assert not errors, "the server logged errors:\n" + "".join(server.log[start:])
