"""A Confluent Schema Registry subset, enough for confluent-kafka's ``SchemaRegistryClient``,
``AvroSerializer`` (auto.register.schemas) and ``AvroDeserializer``.

Paths are parsed from ``raw_path`` because the client percent-encodes subject names
(``_urlencode`` quotes ``/``), which a decoded-path router would split.
"""

from __future__ import annotations

import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Any

import fastavro
import orjson
from starlette.requests import Request
from starlette.responses import Response

SR_JSON = "application/vnd.schemaregistry.v1+json"


@dataclass(slots=True)
class StoredSchema:
    id: int
    guid: str
    schema: str
    schema_type: str
    references: list[dict[str, Any]]

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema": self.schema, "guid": self.guid}
        if self.schema_type != "AVRO":  # Confluent omits schemaType for Avro
            out["schemaType"] = self.schema_type
        if self.references:
            out["references"] = self.references
        return out


@dataclass
class Subject:
    versions: list[tuple[int, int]] = field(default_factory=list)  # (version, schema id)
    next_version: int = 1


class RegistryError(Exception):
    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _canonical(schema: str) -> str:
    try:
        return orjson.dumps(orjson.loads(schema), option=orjson.OPT_SORT_KEYS).decode()
    except orjson.JSONDecodeError:
        return schema.strip()


def _reply(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=SR_JSON)


class Registry:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.schemas: dict[int, StoredSchema] = {}
        self.by_guid: dict[str, int] = {}
        self.by_key: dict[tuple[str, str, bytes], int] = {}
        self.subjects: dict[str, Subject] = {}
        self.compatibility = "BACKWARD"
        self.subject_compatibility: dict[str, str] = {}
        self.next_id = 1

    # -- model -----------------------------------------------------------------------------

    def _schema_from_request(self, body: bytes) -> tuple[str, str, list[dict[str, Any]]]:
        try:
            req = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise RegistryError(400, 400, f"Invalid JSON: {exc}") from None
        if not isinstance(req, dict) or not isinstance(req.get("schema"), str):
            raise RegistryError(422, 42201, "Request must be an object with a string 'schema'")
        schema_type = str(req.get("schemaType") or "AVRO").upper()
        refs = req.get("references") or []
        schema = req["schema"]
        if schema_type in ("AVRO", "JSON"):
            try:
                parsed = orjson.loads(schema)
            except orjson.JSONDecodeError as exc:
                raise RegistryError(422, 42201, f"Invalid schema: {exc}") from None
            if schema_type == "AVRO" and not refs:
                try:
                    fastavro.parse_schema(parsed)
                except Exception as exc:  # noqa: BLE001 - fastavro raises several types
                    raise RegistryError(422, 42201, f"Invalid schema: {exc}") from None
        return schema, schema_type, refs

    def _key(self, schema: str, schema_type: str, refs: list[dict[str, Any]]) -> tuple[str, str, bytes]:
        return schema_type, _canonical(schema), orjson.dumps(refs, option=orjson.OPT_SORT_KEYS)

    def register(self, subject: str, body: bytes) -> dict[str, Any]:
        schema, schema_type, refs = self._schema_from_request(body)
        key = self._key(schema, schema_type, refs)
        sid = self.by_key.get(key)
        if sid is None:  # ids are global: the same schema under another subject keeps its id
            sid = self.next_id
            self.next_id += 1
            stored = StoredSchema(sid, str(uuid.uuid4()), schema, schema_type, refs)
            self.schemas[sid] = stored
            self.by_guid[stored.guid] = sid
            self.by_key[key] = sid
        subj = self.subjects.setdefault(subject, Subject())
        version = next((v for v, i in subj.versions if i == sid), None)
        if version is None:
            version = subj.next_version
            subj.next_version += 1
            subj.versions.append((version, sid))
        return {"id": sid, "guid": self.schemas[sid].guid, "subject": subject, "version": version,
                **self.schemas[sid].body()}

    def lookup(self, subject: str, body: bytes) -> dict[str, Any]:
        schema, schema_type, refs = self._schema_from_request(body)
        sid = self.by_key.get(self._key(schema, schema_type, refs))
        subj = self.subjects.get(subject)
        version = next((v for v, i in subj.versions if i == sid), None) if subj and sid is not None else None
        if version is None or sid is None:
            raise RegistryError(404, 40403, "Schema not found")
        return {"subject": subject, "version": version, "id": sid, **self.schemas[sid].body()}

    def _subject(self, subject: str) -> Subject:
        subj = self.subjects.get(subject)
        if subj is None or not subj.versions:
            raise RegistryError(404, 40401, f"Subject '{subject}' not found.")
        return subj

    def version(self, subject: str, version: str) -> dict[str, Any]:
        subj = self._subject(subject)
        if version in ("latest", "-1"):
            v, sid = subj.versions[-1]
        else:
            try:
                wanted = int(version)
            except ValueError:
                raise RegistryError(422, 42202, f"Invalid version {version!r}") from None
            match = next(((v, i) for v, i in subj.versions if v == wanted), None)
            if match is None:
                raise RegistryError(404, 40402, f"Version {version} not found.")
            v, sid = match
        return {"subject": subject, "version": v, "id": sid, **self.schemas[sid].body()}

    def schema(self, sid: str) -> StoredSchema:
        try:
            return self.schemas[int(sid)]
        except (ValueError, KeyError):
            raise RegistryError(404, 40403, "Schema not found") from None

    # -- HTTP ------------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        raw = request.scope.get("raw_path") or request.url.path.encode()
        parts = [urllib.parse.unquote(p) for p in raw.decode("latin-1").split("?", 1)[0].strip("/").split("/")]
        try:
            return await self._dispatch(request, request.method, parts)
        except RegistryError as exc:
            return _reply({"error_code": exc.code, "message": exc.message}, exc.status)

    async def _dispatch(self, request: Request, method: str, p: list[str]) -> Response:
        n = len(p)
        head = p[0]
        if head == "subjects":
            if n == 1 and method == "GET":
                return _reply(sorted(s for s, subj in self.subjects.items() if subj.versions))
            subject = p[1] if n > 1 else ""
            if n == 2 and method == "POST":
                return _reply(self.lookup(subject, await request.body()))
            if n == 2 and method == "DELETE":
                subj = self._subject(subject)
                versions = [v for v, _ in subj.versions]
                del self.subjects[subject]
                return _reply(versions)
            if n == 3 and p[2] == "versions":
                if method == "POST":
                    return _reply(self.register(subject, await request.body()))
                if method == "GET":
                    return _reply([v for v, _ in self._subject(subject).versions])
            if n == 4 and p[2] == "versions":
                if method == "GET":
                    return _reply(self.version(subject, p[3]))
                if method == "DELETE":
                    v = self.version(subject, p[3])["version"]
                    subj = self.subjects[subject]
                    subj.versions = [(ver, i) for ver, i in subj.versions if ver != v]
                    return _reply(v)
            if n == 5 and p[2] == "versions" and p[4] == "schema" and method == "GET":
                return Response(self.version(subject, p[3])["schema"].encode(), media_type=SR_JSON)
        elif head == "schemas":
            if n == 2 and p[1] == "types" and method == "GET":
                return _reply(["AVRO", "JSON", "PROTOBUF"])
            if n >= 3 and p[1] == "ids" and method == "GET":
                stored = self.schema(p[2])
                if n == 3:
                    return _reply(stored.body())
                if n == 4 and p[3] == "schema":
                    return Response(stored.schema.encode(), media_type=SR_JSON)
                if n == 4 and p[3] == "versions":
                    return _reply([{"subject": s, "version": v} for s, subj in sorted(self.subjects.items())
                                   for v, i in subj.versions if i == stored.id])
                if n == 4 and p[3] == "subjects":
                    return _reply(sorted(s for s, subj in self.subjects.items()
                                         if any(i == stored.id for _, i in subj.versions)))
            if n == 3 and p[1] == "guids" and method == "GET":
                sid = self.by_guid.get(p[2])
                if sid is None:
                    raise RegistryError(404, 40403, "Schema not found")
                return _reply({"id": sid, **self.schemas[sid].body()})
        elif head == "config":
            subject = p[1] if n > 1 else None
            if method == "GET":
                level = self.subject_compatibility.get(subject, self.compatibility) if subject else self.compatibility
                return _reply({"compatibilityLevel": level})
            if method == "PUT":
                try:
                    level = str(orjson.loads(await request.body())["compatibility"]).upper()
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    raise RegistryError(422, 42203, "Invalid compatibility level") from None
                if subject:
                    self.subject_compatibility[subject] = level
                else:
                    self.compatibility = level
                return _reply({"compatibility": level})
            if method == "DELETE":
                level = self.subject_compatibility.pop(subject, self.compatibility) if subject else self.compatibility
                return _reply({"compatibilityLevel": level})
        elif head == "mode":
            if method == "GET":
                return _reply({"mode": "READWRITE"})
            if method == "PUT":
                try:
                    mode = str(orjson.loads(await request.body())["mode"]).upper()
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    raise RegistryError(422, 42204, "Invalid mode") from None
                return _reply({"mode": mode})
        elif head == "compatibility" and method == "POST":
            return _reply({"is_compatible": True})
        raise RegistryError(404, 404, "HTTP 404 Not Found")
