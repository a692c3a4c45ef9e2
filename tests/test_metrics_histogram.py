"""``BatchHistogram`` (connector/telemetry/metrics.py) is our own histogram type on prometheus_client's public
collector API. It must expose exactly what ``prometheus_client.Histogram`` exposes for the same
observations: if the library changes its histogram format (bucket labels, sample names, types),
these comparisons fail instead of the dashboard's quantiles silently breaking."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from connector.telemetry.metrics import _DELIVERY_BUCKETS, BatchHistogram, Metrics, observe_many

NAME, HELP = "capillary_aep_test_latency_seconds", "Test latency"


def _pair(buckets: tuple[float, ...] = _DELIVERY_BUCKETS) -> tuple[Histogram, BatchHistogram, CollectorRegistry,
                                                                      CollectorRegistry]:
    theirs_registry, ours_registry = CollectorRegistry(), CollectorRegistry()
    theirs = Histogram(NAME, HELP, buckets=buckets, registry=theirs_registry)
    ours = BatchHistogram(NAME, HELP, buckets=buckets, registry=ours_registry)
    return theirs, ours, theirs_registry, ours_registry


def _without_created(text: bytes) -> list[str]:
    return [line for line in text.decode().splitlines() if "_created" not in line]


def _amounts(seed: int) -> list[float]:
    rng = random.Random(seed)
    amounts = [rng.choice((0.0, 0.5, 1.0, 300.0, 86400.0, 86400.5)) for _ in range(50)]  # on the bounds, past
    amounts += [rng.expovariate(1 / 60) for _ in range(500)]
    amounts += [rng.uniform(0, 200_000) for _ in range(100)]
    # Multiples of 1/8 are exact in binary, so the sum is the same in any order (batch or one by one).
    return [round(a * 8) / 8 for a in amounts]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_exposes_exactly_what_prometheus_client_histogram_exposes(seed: int) -> None:
    theirs, ours, theirs_registry, ours_registry = _pair()
    amounts = _amounts(seed)
    for amount in amounts:
        theirs.observe(amount)
    for start in range(0, len(amounts), 97):  # in batches, as the pipeline acknowledges them
        ours.observe_many(amounts[start:start + 97])
    assert _without_created(generate_latest(ours_registry)) == _without_created(generate_latest(theirs_registry))
    assert _without_created(generate_openmetrics(ours_registry)) == \
        _without_created(generate_openmetrics(theirs_registry))


def test_empty_and_single_observations_match_too() -> None:
    theirs, ours, theirs_registry, ours_registry = _pair((0.1, 1, 10))
    assert _without_created(generate_latest(ours_registry)) == _without_created(generate_latest(theirs_registry))
    ours.observe_many([])
    for amount in (1, 0.1):  # on the bounds: counted in them (le is "less or equal")
        ours.observe(amount)
        theirs.observe(amount)
    text = _without_created(generate_latest(ours_registry))
    assert text == _without_created(generate_latest(theirs_registry))
    assert f'{NAME}_bucket{{le="1.0"}} 2.0' in text and f'{NAME}_bucket{{le="0.1"}} 1.0' in text


def test_the_connector_latency_is_a_batch_histogram_and_observe_many_feeds_it() -> None:
    m = Metrics(CollectorRegistry())
    assert isinstance(m.delivery_latency, BatchHistogram)
    observe_many(m.delivery_latency, [0.2, 7200.5, 3 * 3600])
    text = generate_latest(m.registry).decode()
    assert 'capillary_aep_delivery_latency_seconds_bucket{le="0.25"} 1.0' in text
    assert 'capillary_aep_delivery_latency_seconds_bucket{le="14400.0"} 3.0' in text
    assert "capillary_aep_delivery_latency_seconds_count 3.0" in text
