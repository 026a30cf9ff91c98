"""/metrics served by a multi-process API counts what every process did."""

from __future__ import annotations

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from shared.models import Role
from tests.factories import Factory
from tests.processes.conftest import Stack

pytestmark = pytest.mark.processes


def _samples(stack: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = requests.get(stack.base_url + "/metrics", timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counters_move_when_adjustments_are_applied(stack: Stack, stack_factory: Factory) -> None:
    caller = stack_factory.caller(Role.MODERATOR)
    user = stack_factory.user()
    before = _samples(stack)
    route = {"route": "/api/v2/score/", "method": "POST", "status": "201"}
    with requests.Session() as http:
        for n in range(12):
            response = http.post(
                stack.base_url + "/api/v2/score/",
                json={"user_id": user.id, "score": 1, "comment": f"n{n}"},
                headers={"Authorization": f"Bearer {caller.token}"},
                timeout=30,
            )
            assert response.status_code == 201
    # Scrape several times: whichever API process answers, the sums agree.
    scrapes = [_samples(stack) for _ in range(4)]
    for after in scrapes:
        accepted = _value(after, "tally_adjustments_accepted_total")
        assert accepted - _value(before, "tally_adjustments_accepted_total") == 12
        posts = _value(after, "tally_http_requests_total", **route)
        assert posts - _value(before, "tally_http_requests_total", **route) == 12
        applied = _value(after, "tally_adjustments_applied_total")
        assert applied - _value(before, "tally_adjustments_applied_total") == 12
        assert _value(after, "tally_outbox_backlog") == 0
        assert ("tally_queue_depth", (("queue", stack.env["TALLY_QUEUE_NAME"]),)) in after
    # Every process logs JSON lines; none of them carries the token.
    logs = stack.logs()
    assert caller.token not in logs
    assert '"adjustment_ids"' in logs and '"adjustment_id"' in logs
