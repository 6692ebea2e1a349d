"""schemathesis against the admin API's own OpenAPI document (/openapi.json), on a real gateway.

Bounded (``WARDGATE_SCHEMATHESIS_EXAMPLES``, default 10 per operation). Checks: no 5xx for any
generated input, and every operation that declares the admin security scheme refuses a request
without or with a wrong admin token (``ignored_auth``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import ignored_auth

from support import Gateway, start_gateway


@pytest.fixture(scope="module")
def admin_gateway(opa_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = start_gateway(tmp_path_factory.mktemp("schemathesis"))
    gw.create_agent("acme-bot", "acme", ["read"])
    yield gw
    gw.stop()


# schemathesis' pytest plugin (from_fixture) does not run under the pytest we pin, so the
# operations are driven through hypothesis directly: one bounded run per operation.
def test_admin_api_against_its_openapi_document(admin_gateway: Gateway) -> None:
    api = schemathesis.openapi.from_url(f"{admin_gateway.admin}/openapi.json")
    headers = {"Authorization": f"Bearer {admin_gateway.admin_token}"}
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 10
    failures: list[str] = []
    statuses: dict[int, int] = {}
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=int(os.environ.get("WARDGATE_SCHEMATHESIS_EXAMPLES", "10")), deadline=None,
                  database=None, suppress_health_check=list(HealthCheck))
        def exercise(case: schemathesis.Case) -> None:
            response = case.call_and_validate(base_url=admin_gateway.admin, headers=headers,
                                              checks=[not_a_server_error, ignored_auth], timeout=10)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        try:
            exercise()
        except Exception as failure:  # noqa: BLE001 - collect every operation's failure, then report
            failures.append(f"{operation.label}: {failure}"[:2000])
    assert not failures, "\n\n".join(failures)
    print(f"schemathesis: {sum(statuses.values())} calls over {len(operations)} operations, statuses {sorted(statuses.items())}")
    assert sum(statuses.values()) >= len(operations)
