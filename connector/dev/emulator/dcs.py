"""Emulated DCS streaming inlet (§9.1): ``POST /collection/{inletId}`` (200) and
``POST /collection/batch/{inletId}`` (207, one response per message, in order).

Order of checks per request: read the body (always drained, so clients never see a broken pipe),
latency and connection-drop faults, forced-status fault, unknown inlet, auth, size, content type,
JSON. Then the envelope checks of §9.1.5, per message on the batch endpoint.
"""

from __future__ import annotations

import asyncio
import time
import uuid
import zlib
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from connector.dev.emulator.config import DatasetConfig, EmulatorConfig, InletConfig
from connector.dev.emulator.faults import FaultState
from connector.dev.emulator.ims import TokenIssuer
from connector.dev.emulator.store import Accepted, DatasetRecords, Store
from connector.dev.emulator.validation import AsyncValidator, build_validator, violations

JSON = "application/json"
INLET_PROBLEM = "http://ns.adobe.com/adobecloud/problem/data-collection-service/inlet"
AUTH_PROBLEM = "https://ns.adobe.com/adobecloud/problem/data-collection-service-authorization"
ACCEPTED_MEDIA = ("application/json", "application/x-jackson-smile")
TRANSPORT_KEY = "emulator.transport"  # set in the scope by app.EmulatorHttpProtocol

# (reason code, message text) of per-message envelope failures; texts follow the AEP docs.
UNKNOWN_FORMAT = ("unknown_xdm_format", "Message has unknown xdm format")
WRONG_ORG = ("wrong_ims_org", "Message has an absent or wrong ims org in the header")
MISSING_ENTITY = ("missing_xdm_entity", "Payload body is missing xdmEntity")
MISSING_DATASET = ("missing_dataset", "Message header is missing datasetId")


def now_ms() -> int:
    return int(time.time() * 1000)


def _entity_id(m: Any) -> Any:
    """``body.xdmEntity._id`` of a message that may be malformed (for the rejection log)."""
    body = m.get("body") if type(m) is dict else None
    entity = body.get("xdmEntity") if type(body) is dict else None
    return entity.get("_id") if type(entity) is dict else None


def problem(status: int, title: str, message: str, type_: str = INLET_PROBLEM, **extra: Any) -> Response:
    body = {"type": type_, "status": status, "title": title, "report": {"message": message, **extra}}
    return Response(orjson.dumps(body), status_code=status, media_type=JSON)


class DropConnection(Response):
    """Close the connection without sending a response (the client sees a connection error)."""

    def __init__(self) -> None:
        super().__init__(status_code=500)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        transport = scope.get(TRANSPORT_KEY)
        if transport is not None:
            transport.abort()
            # Wait until the server notices the disconnect so it does not try to send a 500.
            while (await receive())["type"] != "http.disconnect":
                pass
            return
        # Not under the emulator's protocol: promise a body and never send it; the server then
        # closes the connection and the client gets an incomplete response.
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"16")]})


class TokenBucket:
    def __init__(self, per_minute: int) -> None:
        self.capacity = float(per_minute)
        self.tokens = float(per_minute)
        self.rate = per_minute / 60.0
        self.last = time.monotonic()

    def take(self) -> bool:
        t = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (t - self.last) * self.rate)
        self.last = t
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class Dcs:
    def __init__(self, cfg: EmulatorConfig, store: Store, faults: FaultState, issuer: TokenIssuer,
                 validator: AsyncValidator) -> None:
        self.cfg = cfg
        self.store = store
        self.faults = faults
        self.issuer = issuer
        self.async_validator = validator
        self.inlets = {i.inlet_id: i for i in cfg.inlets}
        self.validators = {
            (inlet.inlet_id, ds_id): build_validator(ds.json_schema)
            for inlet in cfg.inlets
            for ds_id, ds in inlet.datasets.items()
            if ds.json_schema is not None
        }
        self.buckets: dict[str, TokenBucket] = {}
        self._seq = 0

    def add_inlet(self, inlet: InletConfig) -> None:
        """A new inlet (an HTTP API connection created through the emulated Flow Service)."""
        self.inlets[inlet.inlet_id] = inlet

    def bind_dataset(self, inlet_id: str, dataset_id: str, flow_id: str, dataset: DatasetConfig) -> None:
        """A dataflow from ``inlet_id`` to ``dataset_id``: messages for it are accepted and validated."""
        inlet = self.inlets[inlet_id]
        inlet.datasets[dataset_id] = dataset
        inlet.flow_ids.append(flow_id)
        if dataset.json_schema is not None:
            self.validators[(inlet_id, dataset_id)] = build_validator(dataset.json_schema)

    def _strict_violation(self, inlet: InletConfig, ds_id: str, entity: Any) -> str | None:
        """``strict_schemas``: the first violations of a message against its dataset's schema, as AEP
        rejects fields the schema does not define."""
        validator = self.validators.get((inlet.inlet_id, ds_id))
        if validator is None:
            return None
        errors = violations(validator, entity)
        if not errors:
            return None
        return "schema violation: " + "; ".join(f"{e['pointerToViolation']}: {e['message'][:200]}" for e in errors)

    # -- helpers ---------------------------------------------------------------------------

    def _txid(self, received_ms: int) -> str:
        self._seq += 1
        return f"{received_ms}:{self.cfg.node_id:04d}:{self._seq}"

    def _respond(self, response: Response) -> Response:
        self.store.count_request(response.status_code)
        return response

    @staticmethod
    async def _read_body(request: Request, limit: int) -> tuple[bytes, int]:
        """The body, or b"" if it exceeds ``limit`` (still drained); and the wire size."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
            elif chunks:
                chunks.clear()
        return (b"".join(chunks) if size <= limit else b""), size

    def _forced_response(self, status: int, retry_after: str | None = None) -> Response:
        f = self.faults.faults
        retry_after = retry_after if retry_after is not None else f.retry_after
        headers = {"retry-after": retry_after} if retry_after is not None else None
        if f.body is not None:
            return Response(f.body.encode(), status_code=status, headers=headers, media_type=JSON)
        if status in (401, 403):
            body = {"type": AUTH_PROBLEM, "status": str(status), "title": "Authorization",
                    "report": {"message": f"[{uuid.uuid4()}] Ims service token is invalid (fault injected)"}}
            return Response(orjson.dumps(body), status_code=status, headers=headers, media_type=JSON)
        if 400 <= status < 413:
            body = {"type": INLET_PROBLEM, "status": status, "title": "Bad Request",
                    "report": {"message": "fault injected"}}
            return Response(orjson.dumps(body), status_code=status, headers=headers, media_type=JSON)
        return Response(b"", status_code=status, headers=headers)  # 413/429/5xx: AEP documents no body

    def _auth_failure(self, state: str) -> Response:
        status = 401 if state == "missing" else self.cfg.invalid_token_status
        text = {"missing": "Ims service token is empty", "invalid": "Ims service token is invalid",
                "expired": "Ims service token is expired", "wrong_org": "Ims service token is for another org"}[state]
        body = {"type": AUTH_PROBLEM, "status": str(status), "title": "Authorization",
                "report": {"message": f"[{uuid.uuid4()}] {text}"}}
        return Response(orjson.dumps(body), status_code=status, media_type=JSON)

    def _decode(self, request: Request, body: bytes, inlet: InletConfig) -> tuple[Any, bytes, Response | None]:
        """Content-Encoding, Content-Type and JSON checks: (document, decoded body, error response)."""
        prefix = f"inletId: [{inlet.inlet_id}] imsOrgId: [{inlet.org_id}]"
        unsupported = self.cfg.unsupported_media_type_status
        encoding = request.headers.get("content-encoding", "").strip().lower()
        if encoding and encoding != "identity":
            if encoding != "gzip" or not self.cfg.accept_gzip:
                return None, body, problem(unsupported, "Unsupported Media Type",
                                           f"{prefix} Content-Encoding {encoding!r} is not supported")
            try:
                d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                body = d.decompress(body, self.cfg.max_body_bytes + 1)
            except zlib.error as exc:
                return None, body, problem(400, "Bad Request", f"{prefix} invalid gzip body: {exc}")
            if len(body) > self.cfg.max_body_bytes:
                return None, body, Response(b"", status_code=413)
        ctype = request.headers.get("content-type")
        if ctype is None:
            if not self.cfg.allow_missing_content_type:
                return None, body, problem(unsupported, "Unsupported Media Type",
                                           f"{prefix} Content-Type header is required")
        else:
            media = ctype.split(";", 1)[0].strip().lower()
            if media not in ACCEPTED_MEDIA:
                return None, body, problem(unsupported, "Unsupported Media Type",
                                           f"{prefix} Content-Type {media!r} is not supported")
            if media == "application/x-jackson-smile" and body[:3] == b":)\n":
                return None, body, problem(unsupported, "Unsupported Media Type",
                                           f"{prefix} the emulator cannot decode Smile")
        try:
            return orjson.loads(body), body, None
        except orjson.JSONDecodeError as exc:
            return None, body, problem(400, "Invalid JSON", f"{prefix} Request body is not valid JSON: {exc}")

    def _check(self, inlet: InletConfig, m: Any) -> tuple[tuple[str, str], None, None] | tuple[None, dict[str, Any], str]:
        """§9.1.5 envelope checks for one XDM message: (error, None, None) or (None, entity, datasetId).

        A well-formed message takes the fast path (a handful of lookups); anything odd is
        re-checked step by step to name the first problem."""
        try:
            header = m["header"]
            body = m["body"]
            org = header.get("imsOrgId")
            head_schema = header["schemaRef"]["id"]
            body_schema = body["xdmMeta"]["schemaRef"]["id"]
            entity = body["xdmEntity"]
            ds_id = header["datasetId"]
            ds = inlet.datasets[ds_id]
        except (KeyError, TypeError, AttributeError):
            return self._check_slow(inlet, m)
        if (
            type(entity) is dict
            and (org is None or org == inlet.org_id)
            and head_schema == body_schema == ds.schema_id
            and not (self.cfg.enforce_flow_ids and inlet.flow_ids and header.get("flowId") not in inlet.flow_ids)
        ):
            return None, entity, ds_id
        return self._check_slow(inlet, m)

    def _check_slow(self, inlet: InletConfig, m: Any) -> tuple[tuple[str, str], None, None] | tuple[None, dict[str, Any], str]:
        if type(m) is not dict:
            return UNKNOWN_FORMAT, None, None
        header = m.get("header")
        body = m.get("body")
        if type(header) is not dict or type(body) is not dict:
            return UNKNOWN_FORMAT, None, None
        org = header.get("imsOrgId")
        if org is not None and org != inlet.org_id:
            return WRONG_ORG, None, None
        meta = body.get("xdmMeta")
        body_ref = meta.get("schemaRef") if type(meta) is dict else None
        body_schema = body_ref.get("id") if type(body_ref) is dict else None
        if not body_schema:
            return UNKNOWN_FORMAT, None, None
        entity = body.get("xdmEntity")
        if type(entity) is not dict:
            return MISSING_ENTITY, None, None
        head_ref = header.get("schemaRef")
        head_schema = head_ref.get("id") if type(head_ref) is dict else None
        if not head_schema:
            return UNKNOWN_FORMAT, None, None
        ds_id = header.get("datasetId")
        if not ds_id or type(ds_id) is not str:
            return MISSING_DATASET, None, None
        ds: DatasetConfig | None = inlet.datasets.get(ds_id)
        if ds is None:
            return ("unknown_dataset", f"Dataset [{ds_id}] does not exist or is not bound to this inlet"), None, None
        if head_schema != ds.schema_id:
            return ("schema_mismatch",
                    f"Schema [{head_schema}] in the header does not match dataset [{ds_id}] schema [{ds.schema_id}]"), None, None
        if head_schema != body_schema:
            return ("schema_mismatch",
                    f"header.schemaRef.id [{head_schema}] does not match body.xdmMeta.schemaRef.id [{body_schema}]"), None, None
        if self.cfg.enforce_flow_ids and inlet.flow_ids and header.get("flowId") not in inlet.flow_ids:
            return ("unknown_flow", f"Flow [{header.get('flowId')}] is not a dataflow of this inlet"), None, None
        return None, entity, ds_id

    def _book(self, inlet: InletConfig, received_ms: int, accepted: list[Accepted], body: bytes, batch: bool) -> None:
        """Store accepted messages and queue them for async validation where a schema is set."""
        self.store.accept_many(received_ms, accepted, body, batch)
        profiles = [entity for _, _, entity, ds_id in accepted
                    if (ds := inlet.datasets.get(ds_id)) is not None and ds.record_type == "profile"]
        if profiles:
            self.store.profiles.accept_request(profiles)
        if not self.validators:
            return
        for _, xaction_id, entity, ds_id in accepted:
            validator = self.validators.get((inlet.inlet_id, ds_id))
            if validator is None:
                continue
            recs = self.store.datasets.get(ds_id)
            if recs is None:
                ds = inlet.datasets[ds_id]
                recs = self.store.datasets[ds_id] = DatasetRecords(
                    dedup=ds.record_type == "experience_event", keep_entities=self.store.store_bodies)
            rid = entity.get("_id")
            if recs.dedup and isinstance(rid, str):
                if rid in recs.seen:  # Profile drops a later ExperienceEvent with a known _id
                    recs.dropped_duplicates += 1
                    continue
                recs.seen.add(rid)
            self.async_validator.submit(recs, validator, {"_id": rid, "xactionId": xaction_id, "entity": entity})

    # -- endpoints -------------------------------------------------------------------------

    async def single(self, request: Request) -> Response:
        return await self._handle(request, batch=False)

    async def batch(self, request: Request) -> Response:
        return await self._handle(request, batch=True)

    async def _handle(self, request: Request, batch: bool) -> Response:
        store, faults, cfg = self.store, self.faults, self.cfg
        body, size = await self._read_body(request, cfg.max_body_bytes)
        store.add_bytes(size)
        if batch:
            store.batch_requests += 1
        else:
            store.single_requests += 1
        delay = faults.latency_s()
        if delay:
            await asyncio.sleep(delay)
        if faults.take_drop():
            store.dropped_connections += 1
            store.count_request("dropped")
            return DropConnection()
        forced = faults.take_status()
        if forced is not None:
            store.faulted_requests += 1
            return self._respond(self._forced_response(forced))
        share = faults.take_mixed()
        if share is not None:
            store.faulted_requests += 1
            return self._respond(self._forced_response(share.status, share.retry_after))

        inlet_id = request.path_params["inlet_id"]
        inlet = self.inlets.get(inlet_id)
        if inlet is None:
            status = cfg.unknown_inlet_status
            return self._respond(problem(status, "Not Found", f"inlet [{inlet_id}] not found"))
        if inlet.authentication_required:
            state = self.issuer.check(request.headers.get("authorization"), inlet.org_id)
            if state != "ok":
                return self._respond(self._auth_failure(state))
        if size > cfg.max_body_bytes:
            return self._respond(Response(b"", status_code=413))
        if cfg.require_sandbox_header and request.headers.get("x-sandbox-name") != inlet.sandbox:
            return self._respond(problem(400, "Bad Request", f"x-sandbox-name must be [{inlet.sandbox}]"))
        doc, body, error = self._decode(request, body, inlet)
        if error is not None:
            return self._respond(error)
        if batch:
            return self._respond(self._batch(request, inlet, doc, body))
        return self._respond(self._single(request, inlet, doc, body))

    def _message_fault(self, entity: Any) -> tuple[int, str] | None:
        if not self.faults.has_message_faults:
            return None
        rid = entity.get("_id") if type(entity) is dict else None
        mf = self.faults.take_message_fault(rid)
        if mf is None:
            return None
        return mf.status, mf.message or f"Emulated failure {mf.status} (fault injection)"

    def _raw_flow(self, request: Request, inlet: InletConfig, m: Any) -> tuple[str | None, str | None]:
        """(flowId, error text) for a raw-inlet message (§9.1.9)."""
        flow = request.headers.get("x-adobe-flow-id") or request.query_params.get("x-adobe-flow-id")
        if not flow and type(m) is dict and type(m.get("header")) is dict:
            flow = m["header"].get("flowId")
        if not flow:
            return None, "Missing flow id (x-adobe-flow-id header or query parameter)"
        if inlet.flow_ids and flow not in inlet.flow_ids:
            return None, f"Flow [{flow}] is not a dataflow of this inlet"
        return flow, None

    @staticmethod
    def _raw_accepted(index: int, xaction_id: str, m: dict[str, Any], flow: str) -> Accepted:
        """A raw message is booked under its upsert header's datasetId, or "flow:<flowId>"."""
        header = m.get("header")
        ds_id = header.get("datasetId") if type(header) is dict else None
        entity = m["body"] if type(header) is dict and type(m.get("body")) is dict else m
        return index, xaction_id, entity, ds_id if isinstance(ds_id, str) else f"flow:{flow}"

    def _single(self, request: Request, inlet: InletConfig, doc: Any, body: bytes) -> Response:
        store = self.store
        prefix = f"inletId: [{inlet.inlet_id}] imsOrgId: [{inlet.org_id}]"
        received_ms = now_ms()
        if inlet.data_type == "raw":
            flow, err = self._raw_flow(request, inlet, doc)
            if err is None and type(doc) is not dict:
                err = "Raw payload must be a JSON object"
            if err is not None:
                store.reject("raw_format", 400, f"{prefix} {err}", None, None)
                return problem(400, "Bad Request", f"{prefix} {err}")
            fault = self._message_fault(doc)
            if fault is not None:
                store.reject("fault_injected", fault[0], fault[1], None, None)
                return problem(fault[0], "Emulated failure", f"{prefix} {fault[1]}")
            xaction_id = self._txid(received_ms)
            self._book(inlet, received_ms, [self._raw_accepted(0, xaction_id, doc, flow or "")], body, False)
            return Response(orjson.dumps({"inletId": inlet.inlet_id, "xactionId": xaction_id,
                                          "receivedTimeMs": received_ms, "syncValidation": {"skipped": True},
                                          "flowId": flow}), status_code=200, media_type=JSON)

        err, entity, ds_id = self._check(inlet, doc)
        if err is not None:
            store.reject(err[0], 400, f"{prefix} {err[1]}", None, _entity_id(doc))
            return problem(400, "Invalid XDM Message Format", f"{prefix} {err[1]}")
        assert entity is not None and ds_id is not None
        fault = self._message_fault(entity)
        if fault is not None:
            store.reject("fault_injected", fault[0], fault[1], None, entity.get("_id"))
            return problem(fault[0], "Emulated failure", f"{prefix} {fault[1]}")
        if self.cfg.strict_schemas and (bad := self._strict_violation(inlet, ds_id, entity)) is not None:
            store.reject("schema_violation", 400, f"{prefix} {bad}", None, entity.get("_id"))
            return problem(400, "Invalid XDM Message Format", f"{prefix} {bad}")

        sync: dict[str, Any] = {"skipped": True}
        q = request.query_params
        if (q.get("syncValidation") or q.get("synchronousValidation") or "").lower() == "true":
            if not self.cfg.sync_validation_supported:
                return problem(501, "Not Implemented", f"{prefix} syncValidation is not supported at this location")
            bucket = self.buckets.setdefault(inlet.inlet_id, TokenBucket(self.cfg.sync_validation_rpm))
            if not bucket.take():
                return problem(429, "Too Many Requests", f"{prefix} syncValidation is limited to "
                               f"{self.cfg.sync_validation_rpm} requests per minute")
            validator = self.validators.get((inlet.inlet_id, ds_id))
            errors = violations(validator, entity) if validator is not None else []
            if errors:
                store.reject("sync_validation", 400, f"{prefix} Message is invalid", None, entity.get("_id"))
                cause = {"_streamingValidation": [{"schemaLocation": "#", "pointerToViolation": "#",
                                                   "message": f"{len(errors)} schema violations found",
                                                   "causingExceptions": errors}]}
                return problem(400, "Invalid XDM Message Format", f"{prefix} Message is invalid", cause=cause)
            sync = {"status": "pass"}

        xaction_id = self._txid(received_ms)
        self._book(inlet, received_ms, [(0, xaction_id, entity, ds_id)], body, False)
        out: dict[str, Any] = {"inletId": inlet.inlet_id, "xactionId": xaction_id,
                               "receivedTimeMs": received_ms, "syncValidation": sync}
        flow = doc["header"].get("flowId")
        if flow:
            out["flowId"] = flow
        return Response(orjson.dumps(out), status_code=200, media_type=JSON)

    def _batch(self, request: Request, inlet: InletConfig, doc: Any, body: bytes) -> Response:
        store = self.store
        prefix = f"inletId: [{inlet.inlet_id}] imsOrgId: [{inlet.org_id}]"
        messages = doc.get("messages") if type(doc) is dict else None
        if type(messages) is not list or not messages:
            store.reject("batch_format", 400, "body must be {\"messages\": [...]}", None, None)
            return problem(400, "Bad Request", f"{prefix} Request body must be {{\"messages\": [<message>, ...]}} "
                                               "with at least one message")
        received_ms = now_ms()
        batch_id = self._txid(received_ms)
        v2024 = (inlet.batch_failure_style or self.cfg.batch_failure_style) == "v2024"
        failure_prefix = str(uuid.uuid4()) if v2024 else ""
        raw = inlet.data_type == "raw"
        check = self._check
        accepted: list[Accepted] = []
        accept = accepted.append
        message_faults = self.faults.has_message_faults
        strict = self.cfg.strict_schemas
        responses: list[dict[str, Any]] = []
        append = responses.append

        def fail(i: int, status: int, reason: str, text: str, rid: Any) -> None:
            msg = f"{prefix} {text}"
            store.reject(reason, status, msg, i, rid)
            if v2024:
                append({"xactionId": f"{failure_prefix}-{i}", "status": status, "message": msg})
            else:
                append({"statusCode": status, "message": msg})

        for i, m in enumerate(messages):
            if raw:
                flow, err_text = self._raw_flow(request, inlet, m)
                if err_text is None and type(m) is not dict:
                    err_text = "Raw payload must be a JSON object"
                if err_text is not None:
                    fail(i, 400, "raw_format", err_text, None)
                    continue
                if message_faults and (fault := self._message_fault(m)) is not None:
                    fail(i, fault[0], "fault_injected", fault[1], None)
                    continue
                xaction_id = f"{batch_id}:{i}"
                accept(self._raw_accepted(i, xaction_id, m, flow or ""))
                append({"xactionId": xaction_id})
                continue
            err, entity, ds_id = check(inlet, m)
            if err is not None:
                fail(i, 400, err[0], err[1], _entity_id(m))
                continue
            if message_faults and (fault := self._message_fault(entity)) is not None:
                fail(i, fault[0], "fault_injected", fault[1], entity.get("_id"))  # type: ignore[union-attr] # entity is set whenever err is None
                continue
            if strict and (bad := self._strict_violation(inlet, ds_id, entity)) is not None:  # type: ignore[arg-type] # entity and ds_id are set whenever err is None
                fail(i, 400, "schema_violation", bad, entity.get("_id"))  # type: ignore[union-attr] # entity is set whenever err is None
                continue
            xaction_id = f"{batch_id}:{i}"
            accept((i, xaction_id, entity, ds_id))  # type: ignore[arg-type] # entity and ds_id are set whenever err is None
            append({"xactionId": xaction_id})
        self._book(inlet, received_ms, accepted, body, True)
        out = {"inletId": inlet.inlet_id, "batchId": batch_id, "receivedTimeMs": received_ms, "responses": responses}
        return Response(orjson.dumps(out), status_code=207, media_type=JSON)
