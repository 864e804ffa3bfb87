"""Generated GraphQL requests (schemathesis, from the committed schema) never get a 5xx."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings

from tests.support.paths import ROOT

schema = schemathesis.graphql.from_file((ROOT / "schema.graphql").read_text())

LEAKS = ("Traceback", "asyncpg", ".py", "SELECT ", "postgres")


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_generated_requests_get_clear_answers(case, server):
    response = case.call(base_url=f"{server.url}/graphql")
    assert response.status_code < 500, response.text
    body = response.json()
    assert "data" in body or "errors" in body
    for error in body.get("errors") or []:
        assert error["message"]
        assert not any(leak in error["message"] for leak in LEAKS), error
