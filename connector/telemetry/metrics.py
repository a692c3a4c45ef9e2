"""Every Prometheus metric the connector exports, declared in one place.

Label sets are bounded: topics come from configuration, event types and reasons from fixed tables,
HTTP statuses are grouped by class. Hot paths update per batch (``inc(n)``) with cached children.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# Record birth → acknowledgement: seconds while keeping up, hours while a backlog drains (a p99
# that flat-lines at the last bucket says nothing).
_DELIVERY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800,
                     3600, 7200, 14400, 43200, 86400)
_RECORD_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000)
_BYTE_BUCKETS = (1_000, 10_000, 50_000, 100_000, 250_000, 500_000, 750_000, 900_000, 1_048_576)


class BatchHistogram(Collector):
    """An unlabelled histogram that takes a batch of observations as one update (one lock, one pass),
    for the per-record delivery latency: the pipeline acknowledges thousands of records at a time.

    Our own type on prometheus_client's public collector API (``Collector``, ``HistogramMetricFamily``),
    so it does not depend on how ``prometheus_client.Histogram`` stores its buckets; it exposes the
    same series as a ``Histogram`` with these buckets fed the same observations (a test compares the
    two expositions, so a change in the library's format shows there)."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float],
                 registry: CollectorRegistry | None = None) -> None:
        bounds = sorted(float(b) for b in buckets)
        if not bounds or bounds[-1] != float("inf"):
            bounds.append(float("inf"))
        self.name, self.documentation = name, documentation
        self._bounds = tuple(bounds)
        self._les = tuple(floatToGoString(b) for b in bounds)
        self._counts = [0] * len(bounds)  # per bucket, not cumulative
        self._sum = 0.0
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    def observe(self, amount: float) -> None:
        self.observe_many((amount,))

    def observe_many(self, amounts: Sequence[float]) -> None:
        if not amounts:
            return
        bounds = self._bounds
        hits = [bisect_left(bounds, amount) for amount in amounts]  # first bucket with amount <= bound
        total = sum(amounts)
        with self._lock:
            counts = self._counts
            for i in hits:
                counts[i] += 1
            self._sum += total

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, buckets = 0, []
        for le, n in zip(self._les, counts, strict=True):
            cumulative += n
            buckets.append((le, cumulative))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=total)


class DeprecatedAlias(Collector):
    """A counter's samples under its former name, kept one release so dashboards and rules built on
    it keep working while they move (docs/operations.md#deprecated-metric-names). Read at scrape
    time: nothing is added to the path that counts."""

    def __init__(self, counter: Counter, labels: Sequence[str], old_name: str, new_name: str,
                 registry: CollectorRegistry) -> None:
        self._counter, self._labels = counter, list(labels)
        self._name = old_name.removesuffix("_total")
        self._doc = f"Deprecated: the same series as {new_name}, which replaces it in the next release"
        registry.register(self)

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self._name, self._doc)

    def collect(self) -> Iterator[CounterMetricFamily]:
        for family in self._counter.collect():
            alias = CounterMetricFamily(self._name, self._doc, labels=self._labels)
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    alias.add_metric([sample.labels[n] for n in self._labels], sample.value)
            yield alias


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.registry = r
        p = "capillary_aep_"
        self.build_info = Info(p + "build", "Connector version", registry=r)
        if registry is None:  # the process's own: standard process_* (RSS, CPU, fds) and python_info
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
        self.records_consumed = Counter(p + "records_consumed_total", "Kafka records consumed", ["topic"], registry=r)
        self.records_decoded = Counter(p + "records_decoded_total", "Records decoded", ["topic", "format"], registry=r)
        # XDM messages, not Kafka records (an event makes ~1.5: its ExperienceEvent and, for some types, a
        # profile update); the former records_* names stay one release as deprecated aliases.
        self.records_transformed = Counter(
            p + "messages_transformed_total", "XDM messages produced by the transform", ["kind", "event_type"], registry=r
        )
        self.records_delivered = Counter(
            p + "messages_delivered_total", "XDM messages acknowledged by AEP", ["kind", "event_type"], registry=r
        )
        for counter, name in ((self.records_transformed, "transformed"), (self.records_delivered, "delivered")):
            DeprecatedAlias(counter, ("kind", "event_type"), f"{p}records_{name}_total", f"{p}messages_{name}_total", r)
        self.records_dead_lettered = Counter(
            p + "records_dead_lettered_total", "Records written to the dead-letter topic", ["stage", "reason"], registry=r
        )
        self.records_acknowledged = Counter(
            p + "records_acknowledged_total", "Kafka records released for commit", ["topic"], registry=r
        )
        self.http_requests = Counter(
            p + "http_requests_total", "HTTP requests by endpoint and status class", ["endpoint", "status"], registry=r
        )
        self.http_request_seconds = Histogram(
            p + "http_request_duration_seconds", "HTTP request duration", ["endpoint"], buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_records = Histogram(
            p + "batch_records", "Messages per inlet request", buckets=_RECORD_BUCKETS, registry=r
        )
        self.batch_bytes = Histogram(p + "batch_bytes", "Request body size", buckets=_BYTE_BUCKETS, registry=r)
        self.delivery_latency = BatchHistogram(
            p + "delivery_latency_seconds", "Kafka record timestamp to AEP acknowledgement",
            buckets=_DELIVERY_BUCKETS, registry=r,
        )
        self.retries = Counter(p + "retries_total", "Delivery retries by reason", ["reason"], registry=r)
        self.token_refreshes = Counter(
            p + "token_refreshes_total", "IMS token requests by outcome", ["outcome"], registry=r
        )
        self.inflight_batches = Gauge(p + "inflight_batches", "Requests in flight", registry=r)
        self.inflight_limit = Gauge(
            p + "inflight_limit", "Requests allowed in flight: the lanes, lowered while the inlet answers 429 (AIMD)",
            registry=r)
        self.profile_records_sent = Counter(
            p + "profile_records_sent_total",
            "Profile records sent (first try), after coalescing a customer's updates in a request", registry=r)
        self.profile_updates_merged = Counter(
            p + "profile_updates_merged_total",
            "Profile updates that travelled inside a later update's merged record instead of alone", registry=r)
        self.rate_budget = Gauge(
            p + "rate_budget_messages_per_second", "Configured send budget of the whole group (0: none)", ["kind"],
            registry=r)
        self.rate_share = Gauge(
            p + "rate_share_messages_per_second", "This replica's share of the send budget (its share of the "
            "partitions)", ["kind"], registry=r)
        self.governor_wait = Counter(
            p + "governor_wait_seconds_total", "Time sender threads waited for the send budget", registry=r)
        self.catchup_eta = Gauge(
            p + "catchup_eta_seconds", "Consumer lag of this replica divided by its acknowledgement rate over the "
            "last minute (+Inf: lag and no progress)", registry=r)
        self.catchup_objective = Gauge(
            p + "catchup_objective_seconds", "delivery.catchup_objective_s: the ETA the backlog should stay under",
            registry=r)
        self.identities_dropped = Counter(
            p + "identities_dropped_total", "Non-primary identities left out because AEP's Identity Service would "
            "skip them (too_long, blocked_value, too_many)", ["reason"], registry=r)
        self.transform_fast_declined = Counter(
            p + "transform_fast_declined_total", "Records the transform's generated fast path handed to the generic "
            "path (same output, more CPU), by Capillary event type (other: no type of ours read)", ["event_type"],
            registry=r)
        self.message_retries = Counter(
            p + "message_retries_total", "XDM messages sent again after a per-message 5xx/429 or a failed request",
            registry=r)
        self.sender_errors = Counter(
            p + "sender_errors_total", "Batches whose sender thread raised (the batch is queued again)", registry=r)
        self.stalled_partitions = Gauge(
            p + "stalled_partitions",
            "Partitions whose commit point has not moved for delivery.stall_warning_s while later records are "
            "acknowledged", registry=r)
        self.dlq_errors = Counter(
            p + "dlq_errors_total", "Dead-letter writes that failed, by whether a retry can succeed (the log names "
            "the error)", ["retriable"], registry=r)
        for retriable in ("true", "false"):
            self.dlq_errors.labels(retriable)  # exported at 0 from the start: alerts and panels see the series
        self.dlq_truncated = Counter(
            p + "dlq_truncated_total", "Dead letters written without (part of) the original value: too large",
            registry=r)
        self.buffered_records = Gauge(p + "buffered_records", "Records received and not yet acknowledged", registry=r)
        self.paused_partitions = Gauge(p + "paused_partitions", "Partitions paused for backpressure", registry=r)
        self.assigned_partitions = Gauge(p + "assigned_partitions", "Partitions assigned", registry=r)
        self.committed_offset = Gauge(
            p + "committed_offset",
            "Next offset to consume, stored for commit (librdkafka commits it within auto_commit_interval_ms)",
            ["topic", "partition"], registry=r,
        )
        self.consumer_lag = Gauge(
            p + "consumer_lag", "Last stable offset (the high watermark, outside open transactions) minus the group's "
            "committed offset, for the partitions this member owns; librdkafka statistics, every 15 s",
            ["topic", "partition"], registry=r
        )
        self.last_delivery_timestamp = Gauge(
            p + "last_delivery_timestamp_seconds", "Unix time of the last successful inlet request", registry=r
        )
        self.auth_failed = Gauge(p + "auth_failed", "1 while AEP/IMS reject the credentials", registry=r)
        self.up = Gauge(p + "up", "1 while the pipeline loop runs", registry=r)
        self.records_crashed = Counter(
            p + "records_crashed_total", "Records that killed two pipeline processes, dead-lettered instead of "
            "processed a third time (stage process, reason crashed_processing)", registry=r)
        self.input_wait = Counter(
            p + "input_wait_seconds_total", "Wall time the pipeline loop found nothing fetched while it could have "
            "taken records (its rate near 1: input is what limits the rate)", registry=r)
        self.input_held = Counter(
            p + "input_held_seconds_total", "Wall time the consumer loop read nothing because its buffers were full "
            "(delivery.max_buffered_*): delivery is what limits the rate", registry=r)
        self.lane_seconds = Counter(
            p + "lane_seconds_total", "Wall time each request lane spent in each state: idle (nothing queued), "
            "filling (a batch not yet ready), sending (its request in flight, nothing ready behind it), blocked "
            "(its request in flight and a batch ready behind it), ready (a batch ready, nothing in flight)",
            ["lane", "state"], registry=r)
        self.inflight_batch_seconds = Counter(
            p + "inflight_batch_seconds_total", "Wall time with this many batches in flight (all lanes together)",
            ["batches"], registry=r)
        self.lane_records = Counter(p + "lane_records_total", "Records sent per request lane", ["lane"], registry=r)
        self.lane_queued = Gauge(p + "lane_queued_records", "Records waiting in each request lane (not in flight)",
                                 ["lane"], registry=r)

    def forget_partitions(self, tps: Iterable[tuple[str, int]]) -> None:
        """Drop the per-partition series of partitions this member no longer owns: their new owner
        reports them, and a stale copy would double-count lag across replicas."""
        for topic, partition in tps:
            for gauge in (self.consumer_lag, self.committed_offset):
                try:
                    gauge.remove(topic, str(partition))
                except KeyError:
                    pass


METRICS = Metrics()


def observe_many(histogram: BatchHistogram | Histogram, amounts: Sequence[float]) -> None:
    """``histogram.observe(a)`` for each amount; a :class:`BatchHistogram` takes them as one update."""
    if isinstance(histogram, BatchHistogram):
        histogram.observe_many(amounts)
        return
    for amount in amounts:
        histogram.observe(amount)

