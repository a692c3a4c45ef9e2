"""Schema Registry access (I/O), kept out of ``decode`` so that decoding stays pure.

Uses the Confluent client from ``confluent-kafka[schemaregistry]``. A registry that answers
"not found" yields ``None`` (the record is dead-lettered as ``unknown_schema_id``); a registry
that does not answer raises :class:`RegistryUnavailable` after a few quick retries, so the record
is retried, never dead-lettered.
"""

from __future__ import annotations

import logging
import time

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from connector.errors import RegistryUnavailable

log = logging.getLogger(__name__)

_NOT_FOUND_CODES = {40401, 40403}
_ATTEMPTS = 3


class RegistryLookup:
    """Callable ``schema_id → writer schema JSON text | None`` backed by a Schema Registry.

    The text is returned as the registry serves it: the decoder parses it once per schema id, for
    fastavro and for cavro (which needs the plain schema, not fastavro's parsed form).
    """

    def __init__(self, url: str, client: SchemaRegistryClient | None = None) -> None:
        self.url = url
        self._client = client or SchemaRegistryClient({"url": url})

    def __call__(self, schema_id: int) -> str | None:
        return self._fetch(schema_id)

    def _fetch(self, schema_id: int) -> str | None:
        delay = 0.2
        err: Exception | None = None
        for attempt in range(_ATTEMPTS):
            try:
                return str(self._client.get_schema(schema_id).schema_str)
            except SchemaRegistryError as exc:
                status = exc.http_status_code
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
