"""Configuration: one TOML file, overridden by environment variables, validated once at start.

Precedence (highest first): environment ``CAPILLARY_AEP__<SECTION>__<KEY>`` > TOML file > defaults.
Secrets (the IMS client secret) come from the environment or from a file named by
``aep.ims.client_secret_file``; they are held as ``SecretStr`` so that reprs, logs and
exceptions show ``**********``.

A missing or invalid key raises :class:`ConfigError`, whose message names every offending key
(``aep.ims.client_id: Field required``) so the process fails at start, not at the first record.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Literal, TypeVar, get_origin
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource
from pydantic_settings.exceptions import SettingsError

from connector.delivery.egress import AepHttpConfig
from connector.errors import ConnectorError
from connector.kafka.security import KafkaSecurityConfig, is_secret_property, load_secret_file
from connector.kafka.topics import DEFAULT_DLQ_TOPIC, DEFAULT_SUBSCRIPTION

ENV_PREFIX = "CAPILLARY_AEP__"


def bearer_token_supported() -> bool:
    """confluent-kafka's registry client takes a static bearer token without an identity pool from 2.14
    on (the bench's Quix Streams peer holds it below 2.13 in its own environment)."""
    import confluent_kafka

    return tuple(int(p) for p in confluent_kafka.__version__.split(".")[:2]) >= (2, 14)


def strip_userinfo(url: str) -> str:
    """``url`` without ``user:password@``: what may be printed or logged."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def plain_http(url: str) -> bool:
    return urlsplit(url).scheme.lower() == "http"


def refuse_plain_http(urls: dict[str, str], what: str, opt_in: str) -> None:
    """Credentials never travel in clear: a plain-http URL among ``urls`` fails the start, naming it,
    unless the operator opted in (``opt_in``, for a local emulator)."""
    for key, url in urls.items():
        if plain_http(url):
            raise ValueError(f"{key} {strip_userinfo(url)!r} is plain http: {what} would travel in clear; "
                             f"use https, or set {opt_in} = true (a local emulator only)")


class ConfigError(ConnectorError):
    """Raised when the configuration cannot be loaded; the message names each bad key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _librdkafka_accepts(extra: dict[str, Any]) -> None:
    """librdkafka's own verdict on the properties, at load (a bad name or value would otherwise stop
    ``run`` at its first client with a traceback): a consumer built without bootstrap servers,
    which connects nowhere, and closed at once."""
    from confluent_kafka import Consumer, KafkaException

    try:
        Consumer({"group.id": "capillary-aep-config-check", "log_level": 0, **extra}).close()
    except (KafkaException, ValueError, TypeError) as exc:
        detail = exc.args[0].str() if isinstance(exc, KafkaException) and exc.args else str(exc)
        raise ValueError(f"librdkafka refuses it: {detail}") from None


class KafkaConfig(_Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = "capillary-aep-connector"
    # Topic names, or one entry starting with "^" for a regex subscription.
    topics: list[str] = Field(default_factory=lambda: [DEFAULT_SUBSCRIPTION], min_length=1)
    auto_offset_reset: Literal["earliest", "latest", "error"] = "earliest"
    session_timeout_ms: int = Field(45_000, ge=1_000)
    max_poll_interval_ms: int = Field(300_000, ge=10_000)
    auto_commit_interval_ms: int = Field(1_000, ge=100)
    consume_batch: int = Field(1_000, ge=1, le=100_000)
    consume_timeout_s: float = Field(0.1, gt=0, le=5)
    group_instance_id: str | None = None
    dlq_topic: str = DEFAULT_DLQ_TOPIC  # outside the default subscription
    # Raw librdkafka properties merged last into the consumer and producer configs.
    extra: dict[str, str | int | float | bool] = Field(default_factory=dict)
    # TLS / SASL for every Kafka client (connector/kafka/security.py).
    security: KafkaSecurityConfig = Field(default_factory=KafkaSecurityConfig)

    @field_validator("extra")
    @classmethod
    def _no_secrets_in_extra(cls, extra: dict[str, Any]) -> dict[str, Any]:
        # A secret here would be a plain dict entry: printed by repr(), unknown to the log redaction.
        bad = sorted(name for name in extra if is_secret_property(name))
        if bad:
            raise ValueError(f"{', '.join(bad)} is a secret: set it in kafka.security (e.g. "
                             "kafka.security.sasl.password or password_file), where it is masked and redacted")
        if extra:
            _librdkafka_accepts(extra)
        return extra

    @model_validator(mode="after")
    def _dlq_outside_subscription(self) -> KafkaConfig:
        # A dead-letter topic the connector also consumes would feed its poison back to itself forever.
        for t in self.topics:
            hit = re.match(t, self.dlq_topic) if t.startswith("^") else t == self.dlq_topic
            if hit:
                raise ValueError(f"dlq_topic {self.dlq_topic!r} is matched by the subscription {t!r}")
        return self

    @field_validator("topics")
    @classmethod
    def _check_regex(cls, topics: list[str]) -> list[str]:
        for t in topics:
            if t.startswith("^"):
                try:
                    re.compile(t)
                except re.error as exc:
                    raise ValueError(f"invalid topic regex {t!r}: {exc}") from exc
        return topics


class DecodeConfig(_Section):
    # Confluent Schema Registry base URL; empty disables the wire-format path (such records go to the DLQ).
    schema_registry_url: str = ""
    # Directory with the .avsc files used for Avro single-object encoding; default: the packaged schemas.
    schemas_dir: str = ""
    # Schema Registry credentials: HTTP basic or a bearer token (secrets, also as *_file), TLS trust
    # and client certificate. Credentials written into the URL (user:pass@) are moved here at load,
    # so the URL that is printed or logged never carries them.
    schema_registry_username: str = ""
    schema_registry_password: SecretStr = SecretStr("")
    schema_registry_password_file: str = ""
    schema_registry_bearer_token: SecretStr = SecretStr("")
    schema_registry_bearer_token_file: str = ""
    # Confluent Cloud's registry id (lsrc-…) sent with a bearer token as target-sr-cluster.
    schema_registry_logical_cluster: str = ""
    # Credentials to a plain-http registry are refused unless this is set (a local registry only).
    allow_insecure_http: bool = False
    schema_registry_ca_file: str = ""
    schema_registry_cert_file: str = ""
    schema_registry_key_file: str = ""
    # Decode limits (connector/decode/avro_guard.py): items one Avro array may declare, and the estimated
    # size of a record's decoded objects per byte of the record (at least 1 MiB). Over: dead-lettered.
    max_array_items: int = Field(100_000, ge=1)
    max_decoded_ratio: int = Field(100, ge=1)

    @model_validator(mode="after")
    def _registry_auth(self) -> DecodeConfig:
        parts = urlsplit(self.schema_registry_url)
        if parts.username is not None or parts.password is not None:
            if not self.schema_registry_username:
                object.__setattr__(self, "schema_registry_username", unquote(parts.username or ""))
            if not self.schema_registry_password.get_secret_value():
                object.__setattr__(self, "schema_registry_password", SecretStr(unquote(parts.password or "")))
            object.__setattr__(self, "schema_registry_url", strip_userinfo(self.schema_registry_url))
        load_secret_file(self, "schema_registry_password")
        load_secret_file(self, "schema_registry_bearer_token")
        basic = bool(self.schema_registry_username or self.schema_registry_password.get_secret_value())
        if basic and self.schema_registry_bearer_token.get_secret_value():
            raise ValueError("schema_registry_username/password and schema_registry_bearer_token exclude each other")
        if basic and not (self.schema_registry_username and self.schema_registry_password.get_secret_value()):
            raise ValueError("schema_registry_username and schema_registry_password go together")
        if (basic or self.schema_registry_bearer_token.get_secret_value()) and not self.allow_insecure_http:
            refuse_plain_http({"schema_registry_url": self.schema_registry_url}, "the registry credentials",
                              "decode.allow_insecure_http")
        if ":" in self.schema_registry_username:
            raise ValueError("schema_registry_username cannot contain ':'")
        for key in ("schema_registry_ca_file", "schema_registry_cert_file", "schema_registry_key_file"):
            path = getattr(self, key)
            if path and not Path(path).is_file():
                raise ValueError(f"{key} {path!r} is not a readable file")
        if bool(self.schema_registry_cert_file) != bool(self.schema_registry_key_file):
            raise ValueError("schema_registry_cert_file and schema_registry_key_file go together")
        if self.schema_registry_bearer_token.get_secret_value() and not bearer_token_supported():
            import confluent_kafka

            raise ValueError(f"schema_registry_bearer_token needs confluent-kafka >= 2.14 (installed: "
                             f"{confluent_kafka.__version__}, which also demands an identity pool id); upgrade it")
        return self

    def secret_values(self) -> list[str]:
        return [v.get_secret_value() for v in (self.schema_registry_password, self.schema_registry_bearer_token)
                if v.get_secret_value()]


class ImsConfig(_Section):
    url: str = "https://ims-na1.adobelogin.com"
    client_id: str = ""
    client_secret: SecretStr = SecretStr("")
    client_secret_file: str = ""
    scopes: str = "openid,session,AdobeID,read_organizations,additional_info.projectedProductContext"
    # Refresh this long before the token expires (Adobe suggests ~5 minutes).
    refresh_margin_s: float = Field(300.0, ge=0)
    timeout_s: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _load_secret_file(self) -> ImsConfig:
        if self.client_secret_file and not self.client_secret.get_secret_value():
            path = Path(self.client_secret_file)
            try:
                secret = path.read_text().strip()
            except OSError as exc:
                raise ValueError(f"client_secret_file {str(path)!r} cannot be read: {exc.strerror}") from None
            object.__setattr__(self, "client_secret", SecretStr(secret))
        return self


class AepConfig(_Section):
    dcs_url: str = "https://dcs.adobedc.net"
    platform_url: str = "https://platform.adobe.io"  # Platform APIs (``capillary-aep provision`` only)
    inlet_id: str = Field(..., pattern=r"^[A-Za-z0-9]+$")  # Flow Service's inletId (hex)
    org_id: str = Field(..., pattern=r"^[^@\s]+@AdobeOrg$")
    sandbox: str = "prod"
    source_name: str = "capillary-aep-connector"
    authentication_required: bool = True
    ims: ImsConfig = Field(default_factory=ImsConfig)
    # Proxy, CA bundle and client certificate towards IMS and the inlet (connector/delivery/egress.py).
    http: AepHttpConfig = Field(default_factory=AepHttpConfig)
    # With authentication, plain-http IMS and inlet URLs are refused unless this is set (an emulator).
    allow_insecure_http: bool = False

    @property
    def batch_url(self) -> str:
        return f"{self.dcs_url.rstrip('/')}/collection/batch/{self.inlet_id}"

    @model_validator(mode="after")
    def _check_auth(self) -> AepConfig:
        if self.authentication_required:
            if not self.ims.client_id:
                raise ValueError("ims.client_id is required when authentication_required is true")
            if not self.ims.client_secret.get_secret_value():
                raise ValueError(
                    "ims.client_secret is required when authentication_required is true "
                    f"(set {ENV_PREFIX}AEP__IMS__CLIENT_SECRET or aep.ims.client_secret_file)"
                )
            if not self.allow_insecure_http:
                refuse_plain_http({"ims.url": self.ims.url, "dcs_url": self.dcs_url},
                                  "the IMS client secret and access token", "aep.allow_insecure_http")
        return self


class RouteConfig(_Section):
    """Where one class of XDM record goes: dataset, schema and (optional) dataflow."""

    # Shapes, so that a placeholder left from a template ("<dataset id>") fails the start.
    dataset_id: str = Field(..., pattern=r"^[A-Za-z0-9_-]+$")
    schema_id: str = Field(..., pattern=r"^[^\s<>]+$")  # full $id: https://ns.adobe.com/<tenant>/schemas/<id>
    flow_id: str = Field("", pattern=r"^[A-Za-z0-9-]*$")
    content_type: str = "application/vnd.adobe.xed-full+json;version=1"


class IdentityConfig(_Section):
    customer_id_namespace: str = "CapillaryCustomerId"
    external_id_namespace: str = "CapillaryExternalId"
    card_namespace: str = "LoyaltyCardNumber"
    email_namespace: str = "Email"
    phone_namespace: str = "Phone"
    # "plain": send email/phone as they are; "sha256": normalise and hash into Email_LC_SHA256 / Phone_SHA256.
    pii_mode: Literal["plain", "sha256"] = "plain"
    email_sha256_namespace: str = "Email_LC_SHA256"
    phone_sha256_namespace: str = "Phone_SHA256"
    authenticated_state: Literal["ambiguous", "authenticated", "loggedOut"] = "ambiguous"


class XdmConfig(_Section):
    tenant_id: str = Field("capillary", pattern=r"^[A-Za-z0-9_]+$")  # fields go under "_<tenant_id>"
    event: RouteConfig
    profile: RouteConfig | None = None  # no profile route: profile updates are not produced
    # Per Capillary event name overrides of the event/profile routes.
    event_overrides: dict[str, RouteConfig] = Field(default_factory=dict)
    profile_overrides: dict[str, RouteConfig] = Field(default_factory=dict)
    unknown_events: Literal["dlq", "passthrough"] = "dlq"
    # A timestamp later than now (+ skew) is clamped to now ("clamp") or dead-lettered ("reject").
    future_timestamps: Literal["clamp", "reject"] = "clamp"
    future_skew_s: float = Field(5.0, ge=0)
    preflight_validation: bool = True
    identity: IdentityConfig = Field(default_factory=IdentityConfig)
    # Where each profile update carries its source event's time (dotted path in the profile record),
    # for a timestamp-ordered merge policy: AEP does not apply streamed profile records in order.
    # Needs the External Source System Audit field group in the profile schema; "off" disables.
    profile_timestamp_field: str = Field("extSourceSystemAudit.lastUpdatedDate",
                                         pattern=r"^(off|[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*)$")


class BatchConfig(_Section):
    max_records: int = Field(5_000, ge=1)
    # Whole request body including the {"messages":[...]} wrapper; AEP rejects > 1 MiB with 413.
    max_bytes: int = Field(950_000, ge=1_024, le=1_048_576)
    # Under a backlog batches fill by size long before this; at a moderate rate it is most of the
    # latency (bench/run.py --mode steady: p50 235 -> 83 ms at 2.5k events/s going from 200 to 50).
    linger_ms: int = Field(50, ge=0)
    # Parallel request lanes; a partition always maps to one lane.
    lanes: int = Field(8, ge=1, le=64)
    # Requests a lane may have in flight: beyond the first, only full batches of customers the lane's
    # requests in flight do not carry (a customer's records stay in order), so a slow inlet answer
    # does not hold back the rest of the lane (issue 35; docs/operations.md, Sizing).
    max_inflight_per_lane: int = Field(4, ge=1, le=16)
    # Send one profile record per customer and route per request, merging its updates in offset
    # order (connector/delivery/coalesce.py): AEP does not apply a request's profile records in order.
    coalesce_profiles: bool = True

    @property
    def max_inflight(self) -> int:
        """Requests in flight at most: every lane's."""
        return self.lanes * self.max_inflight_per_lane

    @property
    def max_record_size(self) -> int:
        """A record whose messages take more than this can never fit in a request."""
        from connector.delivery.batch import WRAPPER_BYTES  # here: batch imports this module

        return self.max_bytes - WRAPPER_BYTES


class DeliveryConfig(_Section):
    connect_timeout_s: float = Field(5.0, gt=0)
    request_timeout_s: float = Field(30.0, gt=0)
    backoff_initial_s: float = Field(0.2, gt=0)
    backoff_max_s: float = Field(30.0, gt=0)
    # Received-but-unacknowledged records (and queued request bytes): at this bound the loop stops
    # reading (librdkafka keeps its small prefetch queue), past 1.5 × it pauses the assignment (a
    # long outage). What bounds RSS under a backlog, now that fetches no longer starve the input:
    # 12k is about what keeps every stage busy at once (8 lanes with a request in flight and one
    # filling, two chunks per worker, the next chunks waiting); bench/run.py reports the p50/max.
    max_buffered_records: int = Field(12_000, ge=100)
    max_buffered_bytes: int = Field(64_000_000, ge=1_000_000)
    # SIGTERM: time to finish in-flight batches and dead letters; the process then ends within this
    # plus the consumer close (at most 5 s): 20 + 5 fits Kubernetes' default 30 s grace period.
    drain_timeout_s: float = Field(20.0, ge=0)
    # Time a revoke waits for in-flight batches of the revoked partitions before abandoning them.
    revoke_timeout_s: float = Field(15.0, ge=0)
    # A record whose message keeps failing (per-message 5xx/429) in rounds where the inlet accepted
    # other messages is dead-lettered after this many; 0 = retry for ever.
    max_message_retries: int = Field(20, ge=0)
    # Log and count (capillary_aep_stalled_partitions) a partition whose commit point has not moved
    # for this long while later records of it are acknowledged.
    stall_warning_s: float = Field(60.0, gt=0)
    # AEP capacity (connector/delivery/governor.py): messages per second the whole consumer group may send
    # (each replica takes its share of the partitions' share), and a separate budget for profile
    # records (the org's Profile streaming capacity, 1,500/s by default). 0 = no limit.
    max_messages_per_s: float = Field(0.0, ge=0)
    max_profile_messages_per_s: float = Field(0.0, ge=0)
    # capillary_aep_catchup_eta_seconds above this fires CapillaryAepCatchUpTooSlow.
    catchup_objective_s: float = Field(3600.0, gt=0)
    # After this long without a successful delivery while records wait, /readyz reports not ready.
    unhealthy_after_s: float = Field(120.0, gt=0)
    # gzip request bodies (Content-Encoding: gzip). AEP does not document it [UNCERTAIN]: off by
    # default; batch.max_bytes still applies to the uncompressed body.
    gzip: bool = False


class ProcessingConfig(_Section):
    # Pipeline processes per replica, each a whole pipeline and consumer-group member
    # (connector/runtime/supervisor.py): "auto" = one per CPU this process may use (the cgroup's
    # quota counts), at most 8. Partitions should be at least processes × replicas.
    processes: int | Literal["auto"] = "auto"
    # No longer used (there are no transform workers): accepted with a warning so that an old file
    # still starts. Remove them from your configuration.
    workers: int | Literal["auto"] | None = None
    worker_memory_limit_mb: int | None = None

    @field_validator("processes")
    @classmethod
    def _check_processes(cls, value: int | str) -> int | str:
        if value != "auto" and not 1 <= int(value) <= 32:
            raise ValueError("must be \"auto\" or an integer from 1 to 32")
        return value


def _default_metrics_listen() -> str:
    # Loopback on a laptop; the image sets CAPILLARY_AEP_METRICS_DEFAULT=0.0.0.0:9400 so that its
    # EXPOSEd port answers. A default, not an override: metrics.listen in the file still wins.
    return os.environ.get("CAPILLARY_AEP_METRICS_DEFAULT", "127.0.0.1:9400")


class MetricsConfig(_Section):
    listen: str = Field(default_factory=_default_metrics_listen)  # "" disables the metrics/health server


class LogConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "json", "text"] = "auto"
    # A progress line (records, messages, dead letters, lag, rate) this often; 0: none.
    progress_interval_s: float = Field(60.0, ge=0)


class FileSettings(BaseSettings):
    """Settings read from the environment (highest precedence), then the TOML file given to
    :func:`load_settings`, then defaults."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True, case_sensitive=False
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if _TOML_PATH[0]:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=_TOML_PATH[0]))
        return tuple(sources)


S = TypeVar("S", bound=FileSettings)


class Settings(FileSettings):
    """The connector's configuration (``capillary-aep run``)."""

    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    decode: DecodeConfig = Field(default_factory=DecodeConfig)
    aep: AepConfig
    xdm: XdmConfig
    batch: BatchConfig = Field(default_factory=BatchConfig)
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)
    processing: ProcessingConfig = Field(default_factory=ProcessingConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    log: LogConfig = Field(default_factory=LogConfig)


class PlatformAccess(BaseModel):
    """What ``provision`` reads of ``[aep]``: the rest (inlet, routes) is what it creates."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    platform_url: str = "https://platform.adobe.io"
    org_id: str = Field(..., pattern=r"^[^@\s]+@AdobeOrg$")
    sandbox: str = Field(..., min_length=1)  # no default: provisioning the wrong sandbox is not undone easily
    authentication_required: bool = True
    ims: ImsConfig = Field(default_factory=ImsConfig)
    # The way out to Adobe, as the connector's (proxy, CA bundle, client certificate): same key, same client.
    http: AepHttpConfig = Field(default_factory=AepHttpConfig)
    allow_insecure_http: bool = False  # as the connector's aep.allow_insecure_http

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        # [aep] is the connector's table: its other keys are known; anything else is a typo.
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(cls.model_fields) - set(AepConfig.model_fields))
            if unknown:
                raise ValueError(f"unknown key(s) {', '.join(unknown)}")
        return data

    @model_validator(mode="after")
    def _check_credentials(self) -> PlatformAccess:
        if not self.ims.client_id or not self.ims.client_secret.get_secret_value():
            raise ValueError("ims.client_id and ims.client_secret are required to call the Platform APIs "
                             f"(set {ENV_PREFIX}AEP__IMS__CLIENT_SECRET or aep.ims.client_secret_file)")
        if not self.allow_insecure_http:
            refuse_plain_http({"ims.url": self.ims.url, "platform_url": self.platform_url},
                              "the IMS client secret and access token", "aep.allow_insecure_http")
        return self


class ProvisionXdm(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    tenant_id: str = Field("capillary", pattern=r"^[A-Za-z0-9_]+$")
    identity: IdentityConfig = Field(default_factory=IdentityConfig)


# The commands that read only part of the connector's file (provision, xdm export, transform): the
# other tables are the connector's, not typos, so they are ignored (provision checks its own).
_PARTIAL = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="ignore", frozen=True,
                              case_sensitive=False)


class ProvisionSettings(FileSettings):
    """``capillary-aep provision`` reads the connector's own configuration file, before its inlet
    and routes exist: only ``[aep]`` access and ``[xdm]`` names; other tables are ignored."""

    model_config = _PARTIAL
    aep: PlatformAccess
    xdm: ProvisionXdm = Field(default_factory=ProvisionXdm)

    @model_validator(mode="before")
    @classmethod
    def _known_tables(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(Settings.model_fields))
            if unknown:
                raise ValueError(f"unknown table(s) {', '.join(unknown)}")
        return data


class ExportSettings(FileSettings):
    """``xdm export`` reads only the ``[xdm]`` names (tenant, identity namespaces): no routes yet,
    no credentials."""

    model_config = _PARTIAL
    xdm: ProvisionXdm = Field(default_factory=ProvisionXdm)


class OfflineAep(BaseModel):
    """What ``transform`` reads of ``[aep]``: no credentials."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    org_id: str = Field("EXAMPLE0RG@AdobeOrg", pattern=r"^[^@\s]+@AdobeOrg$")
    source_name: str = "capillary-aep-connector"


class OfflineSettings(FileSettings):
    """The connector's configuration as ``transform`` reads it: the mapping, the decoding and the
    routes, never a secret (it works offline, where the IMS secret is not set)."""

    model_config = _PARTIAL
    aep: OfflineAep = Field(default_factory=OfflineAep)
    decode: DecodeConfig = Field(default_factory=DecodeConfig)
    xdm: XdmConfig
    batch: BatchConfig = Field(default_factory=BatchConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    processing: ProcessingConfig = Field(default_factory=ProcessingConfig)


_TOML_PATH: list[str | None] = [None]


def _env_names() -> dict[str, str]:
    """The environment's override variables, by upper-case name (the loader ignores case)."""
    return {name.upper(): name for name in os.environ if name.upper().startswith(ENV_PREFIX)}


def _format_errors(exc: ValidationError) -> str:
    lines = []
    env = _env_names()
    for err in exc.errors(include_input=False, include_url=False):
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"].removeprefix("Value error, ")
        variable = env.get(ENV_PREFIX + "__".join(str(p).upper() for p in err["loc"]))
        lines.append(f"{key}: {msg}" + (f" (set by {variable})" if variable else ""))
    return "invalid configuration:\n  " + "\n  ".join(lines)


_JSON_EXAMPLES = {list: '["a", "b"]', tuple: '["a", "b"]', set: '["a", "b"]', dict: '{"key": "value"}'}


def _env_json_errors(cls: type[BaseModel], exc: SettingsError) -> list[str]:
    """Which variable held what pydantic-settings could not read (a list or table must be JSON in
    the environment), with the form it expects: its own message names only the section."""
    section = re.search(r'field "(\w+)"', str(exc))
    field = cls.model_fields.get(section.group(1)) if section else None
    model = getattr(field, "annotation", None)
    fields = getattr(model, "model_fields", {})
    prefix = f"{ENV_PREFIX}{section.group(1).upper()}__" if section else ENV_PREFIX
    out = []
    for upper, name in _env_names().items():
        sub = fields.get(upper.removeprefix(prefix).lower()) if upper.startswith(prefix) else None
        example = _JSON_EXAMPLES.get(get_origin(sub.annotation) or sub.annotation) if sub is not None else None
        if example is None:
            continue
        try:
            json.loads(os.environ[name])
        except ValueError:
            out.append(f"{name}: expected JSON, e.g. {name}='{example}'")
    return out


def load_settings(path: str | Path | None = None, cls: type[S] | None = None, **overrides: Any) -> S:
    """Load and validate ``cls`` (default :class:`Settings`) from a TOML file and the environment,
    or raise :class:`ConfigError` naming the bad keys. Other settings classes (e.g. the webhook
    ingress) use the same loader: subclass :class:`FileSettings`."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            import tomllib

            tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {str(p)!r} is not valid TOML: {exc}") from None
    _TOML_PATH[0] = str(path) if path is not None else None
    try:
        return (cls or Settings)(**overrides)  # type: ignore[return-value] # S is Settings when cls is None
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc)) from None
    except SettingsError as exc:  # e.g. an environment value that should be JSON and is not
        named = _env_json_errors(cls or Settings, exc)
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(named) if named
                          else f"invalid configuration: {exc}") from None
    finally:
        _TOML_PATH[0] = None
