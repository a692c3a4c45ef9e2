"""The peer: a straightforward Quix Streams 3.x pipeline doing the connector's job — what a
competent user would write in an afternoon. The bench runs it on the same events, against the same
emulator, in the same invocation as the connector.

    python bench/peer_quix.py --bootstrap H:P --registry URL --dcs URL --ims URL --group G
                              --topics t1,t2,... --progress FILE [--commit-interval 1.0]

* ``Application`` over the same topics (one ``StreamingDataFrame`` per topic), at-least-once,
  ``auto_offset_reset="earliest"``.
* Value deserializer: Avro with Confluent registry framing (Quix's ``AvroDeserializer`` backed by
  the Schema Registry) or JSON (Quix's ``JSONDeserializer``), chosen by the first byte.
* Transform: the same XDM mapping as the connector (``connector.transform.Transformer``), so both
  sides send identical envelopes; one Kafka record expands to its XDM messages.
* Sink: a ``BatchingSink`` that, on each checkpoint, posts each topic-partition's messages to the
  inlet's batch endpoint in requests of at most 900 KB, with an IMS bearer token (refreshed before
  expiry and on 401/403) and retries with exponential backoff on network errors, 429 and 5xx.
  One request is in flight at a time (Quix flushes sinks synchronously in the checkpoint).

Quix's default ``commit_interval`` is 5 s; this peer uses 1 s (a user who cares about latency
lowers it; it bounds how long records wait in the sink). Progress (records whose messages the inlet
accepted) goes to ``--progress`` as JSON, for the bench to know when the peer is done.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quixstreams import Application
from quixstreams.models.serializers import (
    Deserializer,
    JSONDeserializer,
    SchemaRegistryClientConfig,
    SerializationContext,
)
from quixstreams.models.serializers.avro import AvroDeserializer
from quixstreams.sinks import BatchingSink, SinkBatch

from connector.config import XdmConfig
from connector.dev.emulator import config as em
from connector.transform import Transformer, TransformError

log = logging.getLogger("peer")
MAX_BODY = 900_000


class CapillaryDeserializer(Deserializer):
    """Confluent-framed Avro (magic byte 0) via the Schema Registry, anything else as JSON."""

    def __init__(self, registry_url: str) -> None:
        super().__init__()
        self._avro = AvroDeserializer(schema_registry_client_config=SchemaRegistryClientConfig(url=registry_url))
        self._json = JSONDeserializer()

    def __call__(self, value: bytes, ctx: SerializationContext) -> Any:
        if value[:1] == b"\x00":
            return self._avro(value, ctx)
        return self._json(value, ctx)


class ImsToken:
    def __init__(self, client: httpx.Client, url: str, client_id: str, secret: str) -> None:
        self.client, self.url, self.client_id, self.secret = client, url, client_id, secret
        self.token = ""
        self.expires = 0.0

    def get(self, force: bool = False) -> str:
        if force or not self.token or time.time() > self.expires - 300:
            r = self.client.post(f"{self.url}/ims/token/v3", data={
                "grant_type": "client_credentials", "client_id": self.client_id, "client_secret": self.secret,
                "scope": "openid,session,AdobeID,read_organizations,additional_info.projectedProductContext"})
            r.raise_for_status()
            doc = r.json()
            self.token = doc["access_token"]
            expires_in = float(doc["expires_in"])
            self.expires = time.time() + (expires_in / 1000 if expires_in > 10**6 else expires_in)
        return self.token


class Progress:
    def __init__(self, path: str) -> None:
        self.path = path
        self.records = 0
        self.messages = 0
        self.failed = 0

    def add(self, records: int, messages: int, failed: int) -> None:
        self.records += records
        self.messages += messages
        self.failed += failed
        tmp = self.path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(orjson.dumps({"records": self.records, "messages": self.messages, "failed": self.failed,
                                  "t": time.monotonic()}))
        os.replace(tmp, self.path)


class AepBatchSink(BatchingSink):
    def __init__(self, client: httpx.Client, url: str, token: ImsToken, progress: Progress) -> None:
        super().__init__()
        self.client, self.url, self.token, self.progress = client, url, token, progress
        self.headers = {"Content-Type": "application/json", "x-gw-ims-org-id": em.DEMO_ORG_ID,
                        "x-sandbox-name": "prod"}

    def write(self, batch: SinkBatch) -> None:
        parts: list[bytes] = []
        size = len(b'{"messages":[]}')
        offsets = set()
        failed = 0
        for item in batch:
            offsets.add(item.offset)
            m = orjson.dumps(item.value)
            if parts and size + len(m) + 1 > MAX_BODY:
                failed += self._post(parts)
                parts, size = [], len(b'{"messages":[]}')
            parts.append(m)
            size += len(m) + 1
        if parts:
            failed += self._post(parts)
        self.progress.add(len(offsets), batch.size, failed)

    def _post(self, parts: list[bytes]) -> int:
        body = b'{"messages":[' + b",".join(parts) + b"]}"
        for attempt in range(12):
            headers = {**self.headers, "Authorization": f"Bearer {self.token.get()}"}
            try:
                r = self.client.post(self.url, content=body, headers=headers)
            except httpx.TransportError as exc:
                log.warning("inlet unreachable (%s); retrying", exc)
                time.sleep(min(10.0, 0.2 * 2**attempt) * random.random())
                continue
            if r.status_code in (401, 403):
                self.token.get(force=True)
                continue
            if r.status_code == 429 or r.status_code >= 500:
                retry_after = r.headers.get("Retry-After")
                time.sleep(float(retry_after) if retry_after and retry_after.isdigit()
                           else min(10.0, 0.2 * 2**attempt) * random.random())
                continue
            if r.status_code in (200, 207):
                entries = r.json().get("responses", [])
                bad = [e for e in entries if "statusCode" in e or "status" in e]
                if bad:
                    log.warning("%d messages rejected, e.g. %s", len(bad), bad[0])
                return len(bad)
            raise RuntimeError(f"inlet answered {r.status_code}: {r.text[:300]}")
        raise RuntimeError("inlet still failing after 12 attempts")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--registry", required=True)
    ap.add_argument("--dcs", required=True)
    ap.add_argument("--ims", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--topics", required=True)
    ap.add_argument("--progress", required=True)
    ap.add_argument("--commit-interval", type=float, default=1.0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    xdm = XdmConfig.model_validate({
        "tenant_id": "capillary",
        "event": {"dataset_id": em.DEMO_EVENT_DATASET_ID, "schema_id": em.DEMO_EVENT_SCHEMA_ID,
                  "flow_id": em.DEMO_EVENT_FLOW_ID},
        "profile": {"dataset_id": em.DEMO_PROFILE_DATASET_ID, "schema_id": em.DEMO_PROFILE_SCHEMA_ID,
                    "flow_id": em.DEMO_PROFILE_FLOW_ID},
    })
    transformer = Transformer(xdm, org_id=em.DEMO_ORG_ID, source_name="capillary-aep-connector")

    def to_xdm(event: dict[str, Any]) -> list[dict[str, Any]]:
        try:
            return [m.envelope for m in transformer.transform(event)]
        except TransformError as exc:
            log.warning("skipping an event: %s", exc)
            return []

    client = httpx.Client(timeout=httpx.Timeout(30, connect=5))
    token = ImsToken(client, args.ims, em.DEMO_CLIENT_ID, em.DEMO_CLIENT_SECRET)
    progress = Progress(args.progress)
    url = f"{args.dcs}/collection/batch/{em.DEMO_INLET_ID}"

    app = Application(broker_address=args.bootstrap, consumer_group=args.group, auto_offset_reset="earliest",
                      commit_interval=args.commit_interval, loglevel="WARNING", use_changelog_topics=False)
    deserializer = CapillaryDeserializer(args.registry)
    for name in args.topics.split(","):
        topic = app.topic(name, key_deserializer="bytes", value_deserializer=deserializer)
        sdf = app.dataframe(topic)
        sdf = sdf.apply(to_xdm, expand=True)
        sdf.sink(AepBatchSink(client, url, token, progress))
    app.run()


if __name__ == "__main__":
    main()
