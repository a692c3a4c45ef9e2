"""``capillary-aep ingest``: the Capillary webhook ingress.

Capillary's Event Notification Service POSTs events (one JSON object, or our extension: a JSON
array) to ``/capillary/events``; the ingress authenticates the call, checks each event cheaply,
produces one Kafka record per event (key = Capillary customer id, ``acks=all``, idempotent) and
answers 200 only once the broker has acknowledged every record of the request. See docs/ingest.md.
"""
