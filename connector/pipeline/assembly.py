"""One builder for the stages that more than one command uses: ``run``'s pipelines, ``dlq replay
--direct``, ``check`` and ``backfill`` take their record processor, AEP client, token provider and
sink from here, so a setting honoured by one is honoured by all (the client's proxy, CA bundle and
client certificate; the registry; the sink's request size and profile coalescing)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

    from connector.config import OfflineSettings, Settings
    from connector.delivery.auth import TokenProvider
    from connector.delivery.governor import Governor
    from connector.delivery.sink import Sink
    from connector.processing.record import RecordProcessor


def registry_lookup(s: Settings | OfflineSettings) -> Any:
    """Writer schemas by id from the Schema Registry, or None when none is configured."""
    from connector.decode.registry import RegistryLookup

    return RegistryLookup.from_config(s.decode) if s.decode.schema_registry_url else None


def record_processor(s: Settings | OfflineSettings) -> RecordProcessor:
    """Decode → transform → encode as configured (imported here: the Avro libraries are heavy)."""
    from connector.processing.record import ProcessorSpec, RecordProcessor

    return RecordProcessor(ProcessorSpec.from_settings(s), registry_lookup(s))


def aep_http(s: Settings, *, timeout: float | None = None, connections: int | None = None) -> httpx.Client:
    """The client for IMS and the inlet: ``delivery``'s timeouts unless ``timeout`` is given, and a
    pool of ``connections`` kept alive (one per request in flight, and one for IMS)."""
    import httpx

    from connector.delivery.egress import aep_client

    d = s.delivery
    options: dict[str, Any] = {
        "timeout": timeout if timeout is not None else httpx.Timeout(d.request_timeout_s, connect=d.connect_timeout_s)}
    if connections:
        options["limits"] = httpx.Limits(max_connections=connections, max_keepalive_connections=connections,
                                         keepalive_expiry=60)
    return aep_client(s.aep.http, **options)


def token_provider(s: Settings, client: httpx.Client) -> TokenProvider | None:
    from connector.delivery.auth import TokenProvider

    return TokenProvider(s.aep.ims, client) if s.aep.authentication_required else None


def sink(s: Settings, client: httpx.Client, tokens: TokenProvider | None, *, lanes: int = 1,
         governor: Governor | None = None) -> Sink:
    from connector.delivery.sink import Sink

    return Sink(s.aep, s.delivery, client, tokens, lanes, coalesce_profiles=s.batch.coalesce_profiles,
                max_bytes=s.batch.max_bytes, governor=governor)
