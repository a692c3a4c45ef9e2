"""Prometheus metrics of the webhook ingress (own registry, names ``capillary_ingest_*``).

Labels are bounded: HTTP statuses from the fixed set the app answers, event types from the known
catalogue (anything else is ``other``), reasons from fixed tables.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# What a 429 can be for: a per-client cap, a global one, shutting down, the replay memory being full,
# too many connections open.
THROTTLE_CAPS = ("address", "credential", "requests", "bytes", "stopping", "signatures", "connections")
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class IngestMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        p = "capillary_ingest_"
        self.requests = Counter(p + "requests_total", "Webhook requests by HTTP status", ["status"], registry=r)
        self.events = Counter(p + "events_total", "Events acknowledged by Kafka, by Capillary event type",
                              ["event_type"], registry=r)
        self.rejected_events = Counter(p + "rejected_events_total", "Events answered 400/413, by reason",
                                       ["reason"], registry=r)
        self.auth_failures = Counter(p + "auth_failures_total", "Requests answered 401 for their credentials",
                                     ["reason"], registry=r)
        self.signature_failures = Counter(p + "signature_failures_total", "Requests answered 401 for their "
                                          "signature, by reason (missing, bad, stale, replayed)", ["reason"],
                                          registry=r)
        self.produce_failures = Counter(p + "produce_failures_total", "Requests answered 503, by cause",
                                        ["cause"], registry=r)
        self.request_seconds = Histogram(p + "request_duration_seconds", "Time from headers to response",
                                         buckets=_LATENCY_BUCKETS, registry=r)
        self.accepted_seconds = Histogram(p + "accepted_request_duration_seconds",
                                          "Time from headers to a 200 answer (every event acknowledged by Kafka)",
                                          buckets=_LATENCY_BUCKETS, registry=r)
        self.produce_seconds = Histogram(p + "produce_latency_seconds",
                                         "Time from the first produce() to the broker acknowledging every "
                                         "record of a request", buckets=_LATENCY_BUCKETS, registry=r)
        self.inflight_requests = Gauge(p + "inflight_requests", "Requests admitted and not yet answered", registry=r)
        self.connections = Gauge(p + "connections", "Open webhook connections (TLS: handshake done)", registry=r)
        self.inflight_bytes = Gauge(p + "inflight_bytes", "Body bytes of admitted requests", registry=r)
        self.producer_rebuilds = Counter(p + "producer_rebuilds_total", "Kafka producers replaced, by reason",
                                         ["reason"], registry=r)
        self.broker_up = Gauge(p + "broker_up", "1 while the Kafka cluster is reachable and accepting records",
                               registry=r)
        self.throttled = Counter(p + "throttled_total", "Requests answered 429, by the cap they hit ("
                                 + ", ".join(THROTTLE_CAPS) + ")", ["cap"], registry=r)
        self.timeouts = Counter(p + "timeouts_total", "Connections cut off for reading too slowly (408), by what "
                                "was late: header or body", ["phase"], registry=r)
        # Pre-create the children the hot path uses (cheaper, and every series exists from the start).
        self.status = {s: self.requests.labels(str(s)) for s in (200, 400, 401, 408, 413, 429, 500, 503)}
        for reason in ("missing", "bad", "stale", "replayed"):
            self.signature_failures.labels(reason)
        for cap in THROTTLE_CAPS:
            self.throttled.labels(cap)
        for phase in ("header", "body"):
            self.timeouts.labels(phase)
