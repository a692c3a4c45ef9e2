"""Schema Registry access (I/O), kept out of ``decode`` so that decoding stays pure.

Uses the Confluent client from ``confluent-kafka[schemaregistry]``. A registry that answers
"not found" yields ``None`` (the record is dead-lettered as ``unknown_schema_id``); a registry
that does not answer raises :class:`RegistryUnavailable` after a few quick retries, so the record
is retried, never dead-lettered; so does one that rejects the credentials (401/403). The URL in
messages never carries credentials (they go in ``decode.schema_registry_*``, see :func:`client_config`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from connector.config import DecodeConfig, strip_userinfo
from connector.decode.avro_guard import ForeignSchema
from connector.errors import RegistryUnavailable

log = logging.getLogger(__name__)

_NOT_FOUND_CODES = {40401, 40403}
_ATTEMPTS = 3


class RegistryLookup:
    """Callable ``schema_id → writer schema JSON text | ForeignSchema | None`` backed by a Schema Registry.

    The text is returned as the registry serves it: the decoder parses it once per schema id, for
    fastavro and for cavro (which needs the plain schema, not fastavro's parsed form). A shared
    registry also holds JSON Schema and Protobuf subjects, and a producer picks any id: those come
    back as ``ForeignSchema(type)``, and the decoder dead-letters their records.
    """

    def __init__(self, url: str, client: SchemaRegistryClient | None = None, conf: dict[str, Any] | None = None) -> None:
        self.url = strip_userinfo(url)  # printed in RegistryUnavailable: never with credentials
        self._client = client or SchemaRegistryClient(conf or {"url": url})

    @classmethod
    def from_config(cls, decode: DecodeConfig) -> RegistryLookup:
        return cls(decode.schema_registry_url, conf=client_config(decode))

    def __call__(self, schema_id: int) -> str | ForeignSchema | None:
        return self._fetch(schema_id)

    def _fetch(self, schema_id: int) -> str | ForeignSchema | None:
        delay = 0.2
        err: Exception | None = None
        for attempt in range(_ATTEMPTS):
            try:
                found = self._client.get_schema(schema_id)
                kind = (found.schema_type or "AVRO").upper()  # Confluent leaves schemaType out for Avro
                return str(found.schema_str) if kind == "AVRO" else ForeignSchema(kind)
            except SchemaRegistryError as exc:
                status = exc.http_status_code
                if status in (401, 403):
                    # Rejected credentials are not an unknown schema: never dead-letter for them.
                    log.warning("schema registry rejected the credentials: HTTP %s", status)
                    raise RegistryUnavailable(f"schema registry at {self.url} rejected the credentials "
                                              f"(HTTP {status})") from None
                if exc.error_code in _NOT_FOUND_CODES or (status is not None and 400 <= status < 500):
                    return None
                err = exc
            except Exception as exc:  # noqa: BLE001 - connection errors surface as several types
                err = exc
            if attempt + 1 < _ATTEMPTS:
                time.sleep(delay)
                delay *= 2
        log.warning("schema registry unavailable: %s", type(err).__name__)
        raise RegistryUnavailable(f"schema registry at {self.url} unavailable: {type(err).__name__}")


def client_config(decode: DecodeConfig) -> dict[str, Any]:
    """The Confluent client's settings: URL, basic or bearer credentials, TLS trust and client cert."""
    conf: dict[str, Any] = {"url": decode.schema_registry_url}
    if decode.schema_registry_username:
        conf["basic.auth.user.info"] = (
            f"{decode.schema_registry_username}:{decode.schema_registry_password.get_secret_value()}")
    token = decode.schema_registry_bearer_token.get_secret_value()
    if token:
        conf.update({"bearer.auth.credentials.source": "STATIC_TOKEN", "bearer.auth.token": token,
                     "bearer.auth.logical.cluster": decode.schema_registry_logical_cluster})
    if decode.schema_registry_ca_file:
        conf["ssl.ca.location"] = decode.schema_registry_ca_file
    if decode.schema_registry_cert_file:
        conf["ssl.certificate.location"] = decode.schema_registry_cert_file
        conf["ssl.key.location"] = decode.schema_registry_key_file
    return conf
