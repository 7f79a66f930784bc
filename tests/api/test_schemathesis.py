"""A bounded schemathesis run over /openapi.json: no operation answers 5xx.

Schemathesis builds requests from the service's own OpenAPI schema (valid ones and, in its
negative phase, ones that break it) and sends them over real HTTP to a real server on the
embedded model. Generations are kept short (small context, DEFAULT_MAX_TOKENS 4) and the
examples per operation few, so the run stays well under a minute.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from genai_service.app import create_app
from tests.conftest import RunningServer, make_settings, run_server


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[RunningServer]:
    with run_server(n_ctx=256, default_max_tokens=4, n_threads=1, max_queue=16) as running:
        yield running


# The schema the server serves at /openapi.json, read at collection time from the same app
# factory (no model loaded), so each operation is a test of its own.
schema = schemathesis.openapi.from_dict(create_app(make_settings()).openapi())


@schema.parametrize()
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_operation_answers_5xx(case: schemathesis.Case, fuzzed: RunningServer) -> None:
    case.call_and_validate(base_url=fuzzed.base_url, checks=[not_a_server_error], timeout=60)
