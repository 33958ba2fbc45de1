"""The published OpenAPI document and the running service agree, checked by schemathesis.

Schemathesis generates requests from ``/openapi.json`` itself (valid ones and, per its checks,
ones the schema forbids) and calls the app in process with a key holding every scope.  A test fails
on any 5xx, on a schema-valid request the service rejects, on a schema-invalid one it accepts, and
on any status, header or body the document does not declare.  The venue API is the bundled
snapshots (unknown venues 404, as the real API answers); the real-time offers answer the bundled
partner in process.  The seed is fixed (``derandomize``) and examples are bounded per operation, so
a run is the same each time and takes seconds.
"""

import re

import pytest
import responses
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from app import create_app
from blueprints.openapi import build_spec
from tests.conftest import VENUE_API
from tests.pricing_fixtures import SLUGS, register_venue

EXAMPLES_PER_OPERATION = 40


def _document() -> dict:
    # The document depends on the code only (routes, schemas, settings bounds), not on the database.
    app = create_app({"TESTING": True, "DATABASE_URL": "sqlite://", "ACCESS_LOG": False})
    try:
        with app.app_context():
            return build_spec(app).to_dict()
    finally:
        app.extensions["courier"].close()


schema = schemathesis.openapi.from_dict(_document())


@pytest.fixture
def venue_api():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        for slug in SLUGS:
            register_venue(mock, VENUE_API, slug)
        mock.get(re.compile(re.escape(VENUE_API) + r"/venues/.*"), status=404, json={"error": "not found"})
        yield mock


def valid_data_is_accepted_or_refused_as_documented(ctx, response, case):
    """Schemathesis's "valid data is accepted", except a refusal the document declares for that
    status (``x-refusals``: the business rules' answer to a well-formed request, such as a price
    beyond the venue's delivery area)."""
    try:
        return positive_data_acceptance(ctx, response, case)
    except AssertionError:
        declared = case.operation.definition.raw["responses"].get(str(response.status_code), {})
        try:
            code = response.json().get("code")
        except ValueError:
            code = None
        if code in declared.get("x-refusals", ()):
            return None
        raise


class QueuedStarter:
    """Coordinator tasks queued nowhere: runs stay ``queued`` (the executor is tested on real workers)."""

    def check(self) -> None:
        pass

    def start_run(self, run_id: int) -> None:
        pass


@pytest.fixture
def runs_can_start(app):
    """Runs submitted over REST need PostgreSQL and a broker; this suite's SQLite app stands in for both."""
    submissions = app.extensions["courier.offers"].submissions
    submissions.database_dialect, submissions.starter_factory = "postgresql", QueuedStarter


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, derandomize=True, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_the_service_answers_as_its_document_says(case, app, api_key, seeded_prep_times, venue_api, runs_can_start):
    case.operation.schema.app = app  # this test's app, for schemathesis's own probes (e.g. without the key)
    case.call_and_validate(app=app, base_url="http://localhost", headers={"Authorization": f"Bearer {api_key}"},
                           excluded_checks=[positive_data_acceptance],
                           additional_checks=[valid_data_is_accepted_or_refused_as_documented])
