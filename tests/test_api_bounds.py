"""Bounded work and memory of the HTTP endpoint: client-chosen names cannot grow /metrics
without bound (a real `python -m runtime` process on its own Redis database)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.broker_process import BrokerProcess

LABEL_CAP = 5


@pytest.fixture
def capped_server(redis_url: str, tmp_path: Path) -> Iterator[BrokerProcess]:
    server = BrokerProcess(redis_url, tmp_path, env={"OJS_METRICS_LABEL_CAP": str(LABEL_CAP)})
    try:
        server.wait_ready()
        yield server
    finally:
        print(server.log_tail())  # shown when the test failed
        server.stop()


def test_metric_labels_take_at_most_the_cap_of_distinct_values_and_count_the_rest_as_other(
    capped_server: BrokerProcess,
) -> None:
    # Given: jobs of 12 distinct client-chosen queues and types
    jobs = [{"type": f"kind.n{n}", "args": [], "options": {"queue": f"q{n}"}} for n in range(12)]
    response = httpx.post(f"{capped_server.url}/ojs/v1/jobs/batch", json={"jobs": jobs})
    assert response.status_code == 201, response.text
    # When
    scraped = httpx.get(f"{capped_server.url}/metrics").text
    # Then: at most the cap of named values per label; every job counted, the rest under "other"
    samples = [s for family in text_string_to_metric_families(scraped) for s in family.samples
               if s.name == "ojs_job_enqueued_total"]
    queues = {s.labels["queue"] for s in samples}
    types = {s.labels["type"] for s in samples}
    assert len(queues - {"other"}) <= LABEL_CAP and "other" in queues, queues
    assert len(types - {"other"}) <= LABEL_CAP and "other" in types, types
    assert sum(s.value for s in samples) == 12
    assert sum(s.value for s in samples if s.labels["queue"] == "other") == 12 - LABEL_CAP
