"""``IngestSettings``: the webhook ingress configuration (TOML file + ``CAPILLARY_AEP__*`` env).

Sections: ``[kafka]`` (the connector's :class:`KafkaConfig`; the ingress uses ``bootstrap_servers``
and ``extra``), ``[ingest]`` and ``[log]``. Secrets (token, basic password, signing secret) come from the
environment or from a file and are held as ``SecretStr``. The producer guarantees (``acks=all``,
idempotence) cannot be weakened through ``kafka.extra``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from connector.config import ENV_PREFIX, FileSettings, KafkaConfig, LogConfig, _Section
from connector.kafka.security import security_properties
from connector.kafka.topics import TOPIC_PREFIX

# librdkafka properties the ingress owns: weakening them would make a 200 a lie.
PROTECTED_PRODUCER_KEYS = frozenset({
    "acks", "request.required.acks", "enable.idempotence", "message.timeout.ms", "delivery.timeout.ms",
    "transactional.id",
})


def _read_secret(path: str, key: str) -> SecretStr:
    try:
        return SecretStr(Path(path).read_text().strip())
    except OSError as exc:
        raise ValueError(f"{key} {path!r} cannot be read: {exc.strerror}") from None


def tls_problem(cert_file: str, key_file: str) -> str | None:
    """Why this certificate and key cannot serve HTTPS (unreadable, not PEM, not a pair), or None."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:  # (an OSError too: first)
        return f"not a usable PEM certificate and matching key ({exc.reason or exc})"
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    return None


_HEADER_NAME = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"  # an HTTP token (RFC 9110)
# A shared secret shorter than this is refused at start: 32 hex characters are 128 bits, and a
# webhook secret is typed once into Capillary's settings, so length costs nothing.
MIN_SECRET_CHARS = 32


class IngestConfig(_Section):
    listen: str = "127.0.0.1:8090"
    # "bearer": `Authorization: Bearer <token>`; "header": <auth_header>: <token> (e.g. X-Api-Key);
    # "basic": HTTP basic auth; "none": no authentication (only behind something that does it).
    auth_mode: Literal["bearer", "header", "basic", "none"] = "bearer"
    auth_header: str = Field("Authorization", min_length=1, pattern=_HEADER_NAME)
    auth_token: SecretStr = SecretStr("")
    auth_token_file: str = ""
    basic_username: str = ""
    basic_password: SecretStr = SecretStr("")
    basic_password_file: str = ""
    topic_prefix: str = TOPIC_PREFIX
    # Event name → topic, overriding the family default (prefix + customer/transaction/points/...).
    topics: dict[str, str] = Field(default_factory=dict)
    # Deadline for the broker to acknowledge every record of a request; past it → 503.
    produce_timeout_s: float = Field(10.0, gt=0, le=300)
    max_inflight_requests: int = Field(1024, ge=1)
    # Open connections (idle kept-alive ones too); a request on one more is answered 429 and closed.
    max_connections: int = Field(2048, ge=1)
    max_inflight_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    retry_after_s: int = Field(5, ge=1, le=3600)
    linger_ms: float = Field(10.0, ge=0, le=1000)
    # Facing the internet (issue 19). /metrics is served only here, never on `listen`; "" disables it.
    metrics_listen: str = "127.0.0.1:9401"
    # A connection must deliver a request's headers within this long (else 408 and closed), and an
    # admitted request its whole body (else 408, closed, its admission slot freed).
    header_timeout_s: float = Field(10.0, gt=0, le=300)
    body_timeout_s: float = Field(60.0, gt=0, le=3600)
    # Per-client caps, checked before the global ones (0: no cap of its own).
    max_inflight_per_address: int = Field(64, ge=0)
    max_inflight_per_credential: int = Field(0, ge=0)
    # Proxies whose X-Forwarded-For / X-Forwarded-Proto are believed ("" none, or "10.0.0.1,10.0.0.2", "*").
    forwarded_allow_ips: str = ""
    # Serve HTTPS directly: PEM certificate (chain) and key files, re-read when either changes.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_reload_interval_s: float = Field(10.0, gt=0, le=3600)
    # Optional HMAC over "<timestamp>.<body>" (signature.py); when the secret is set, every request
    # must carry a valid, fresh, unseen signature, on top of auth_mode.
    signing_secret: SecretStr = SecretStr("")
    signing_secret_file: str = ""
    signature_header: str = Field("X-Capillary-Signature", min_length=1, pattern=_HEADER_NAME)
    timestamp_header: str = Field("X-Capillary-Timestamp", min_length=1, pattern=_HEADER_NAME)
    signature_algorithm: Literal["sha256", "sha384", "sha512"] = "sha256"
    signature_window_s: int = Field(300, ge=1, le=3600)
    # Signatures remembered against replays (about 120 bytes each); full → 429, never forgotten early.
    signature_max_remembered: int = Field(500_000, ge=1)

    @field_validator("listen", "metrics_listen")
    @classmethod
    def _check_listen(cls, value: str, info: ValidationInfo) -> str:
        if info.field_name == "metrics_listen" and value == "":
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{info.field_name} must be host:port, got {value!r}")
        return value

    @field_validator("topics")
    @classmethod
    def _check_topics(cls, topics: dict[str, str]) -> dict[str, str]:
        for name, topic in topics.items():
            if not topic or len(topic) > 249 or not all(c.isalnum() or c in "._-" for c in topic):
                raise ValueError(f"topic for {name!r} is not a valid Kafka topic name: {topic!r}")
        return topics

    @model_validator(mode="after")
    def _check_auth(self) -> IngestConfig:
        env = f"{ENV_PREFIX}INGEST__"
        if self.auth_token_file and not self.auth_token.get_secret_value():
            object.__setattr__(self, "auth_token", _read_secret(self.auth_token_file, "auth_token_file"))
        if self.basic_password_file and not self.basic_password.get_secret_value():
            object.__setattr__(self, "basic_password", _read_secret(self.basic_password_file, "basic_password_file"))
        in_use = {"auth_token": self.auth_mode in ("bearer", "header"), "basic_password": self.auth_mode == "basic",
                  "signing_secret": True}
        for key, used in in_use.items():
            length = len(getattr(self, key).get_secret_value())
            if used and 0 < length < MIN_SECRET_CHARS:  # (empty: "required" below says it better)
                raise ValueError(f"{key} is {length} characters; at least {MIN_SECRET_CHARS} are required "
                                 "(e.g. openssl rand -hex 32)")
        if self.signing_secret_file and not self.signing_secret.get_secret_value():
            object.__setattr__(self, "signing_secret", _read_secret(self.signing_secret_file, "signing_secret_file"))
        if self.signing_secret.get_secret_value():
            taken = {"authorization", "content-length", self.auth_header.lower()}
            sig, ts = self.signature_header.lower(), self.timestamp_header.lower()
            if sig == ts or sig in taken or ts in taken:
                raise ValueError("signature_header and timestamp_header must differ from each other, from "
                                 "Authorization, Content-Length and auth_header")
        if self.auth_mode in ("bearer", "header") and not self.auth_token.get_secret_value():
            raise ValueError(f"auth_token is required when auth_mode is {self.auth_mode!r} "
                             f"(set {env}AUTH_TOKEN or ingest.auth_token_file)")
        if self.auth_mode == "basic":
            if not self.basic_username:
                raise ValueError("basic_username is required when auth_mode is 'basic'")
            if not self.basic_password.get_secret_value():
                raise ValueError("basic_password is required when auth_mode is 'basic' "
                                 f"(set {env}BASIC_PASSWORD or ingest.basic_password_file)")
            if ":" in self.basic_username:
                raise ValueError("basic_username cannot contain ':'")
        if self.max_body_bytes > self.max_inflight_bytes:
            raise ValueError("max_body_bytes cannot exceed max_inflight_bytes (such a request could never be taken)")
        if self.metrics_listen and self.metrics_listen == self.listen:
            raise ValueError("metrics_listen must differ from listen (/metrics is not served on the webhook port)")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file go together (set both for HTTPS, neither for HTTP)")
        if self.tls_cert_file:
            problem = tls_problem(self.tls_cert_file, self.tls_key_file)
            if problem:
                raise ValueError(f"tls_cert_file/tls_key_file: {problem}")
        return self

    @property
    def metrics_host_port(self) -> tuple[str, int] | None:
        if not self.metrics_listen:
            return None
        host, _, port = self.metrics_listen.rpartition(":")
        return host or "127.0.0.1", int(port)

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host or "0.0.0.0", int(port)


class IngestSettings(FileSettings):
    """The webhook ingress configuration (``capillary-aep ingest``)."""

    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    log: LogConfig = Field(default_factory=LogConfig)

    @model_validator(mode="after")
    def _check_extra(self) -> IngestSettings:
        bad = sorted(PROTECTED_PRODUCER_KEYS & set(self.kafka.extra))
        if bad:
            raise ValueError(f"kafka.extra: {', '.join(bad)} cannot be set for the ingress "
                             "(it always produces with acks=all, idempotence on, message.timeout.ms = "
                             "ingest.produce_timeout_s)")
        return self

    def producer_config(self) -> dict[str, str | int | float | bool]:
        """librdkafka settings: durable (acks=all, idempotent), Java-compatible key hashing so a
        customer's records land in the same partition as those of Java producers (Kafka's default
        partitioner), lz4, and a local queue bounded like the ingress itself. ``kafka.extra``
        overrides anything but the guarantees."""
        ingest = self.ingest
        conf: dict[str, str | int | float | bool] = {
            "bootstrap.servers": self.kafka.bootstrap_servers,
            "client.id": "capillary-aep-ingest",
            "linger.ms": ingest.linger_ms,
            "partitioner": "murmur2_random",
            # JSON events compress ~5x; lz4 costs the ingress ~1 us a record and saves the broker more.
            "compression.type": "lz4",
            "queue.buffering.max.kbytes": max(16_384, 2 * ingest.max_inflight_bytes // 1024),
            "queue.buffering.max.messages": 500_000,
            "socket.keepalive.enable": True,
        }
        conf.update(security_properties(self.kafka.security))
        conf.update(self.kafka.extra)
        conf.update({
            "acks": "all",
            "enable.idempotence": True,
            # A record not acknowledged by the deadline is given up (its request has had its 503), so
            # the local queue never holds more than one deadline's worth of records.
            "message.timeout.ms": max(1, int(ingest.produce_timeout_s * 1000)),
        })
        return conf

    @property
    def max_message_bytes(self) -> int:
        """Largest record value the producer accepts (librdkafka ``message.max.bytes`` minus framing)."""
        return int(self.kafka.extra.get("message.max.bytes", 1_000_000)) - 512
