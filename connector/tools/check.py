"""``capillary-aep check``: can this configuration work? One verdict per dependency.

Checks, in order (a failed configuration stops there; an IMS failure skips the inlet probe):

* config    the TOML file and environment validate (the error names each bad key, never a value);
* kafka     the bootstrap servers answer a metadata request;
* topics    the subscription matches at least one topic (each named topic exists), and not the
            dead-letter topic; the principal may READ each matched topic;
* dlq       the dead-letter topic exists with a leader per partition and the principal may WRITE it
            (missing: a failure, unless the broker says ``auto.create.topics.enable=true``; managed
            Kafka creates nothing on first use, and the first dead letter would stop the connector,
            exit 6);
* group     the consumer group (``kafka.group_id``) can be described and the principal may READ it;
* budget    the send budget (``delivery.max_messages_per_s``) and one replica's share (skipped
            without a budget);
* registry  ``GET /subjects`` answers 200 (skipped when no registry is configured);
* ims       a token is obtained with the client credentials (skipped without authentication);
* inlet     ``POST /collection/batch/{inletId}`` with ``{"messages":[]}``: an empty batch carries no
            data, so nothing is written. The inlet answers it after resolving the inlet and checking
            the token, so 400 ("at least one message") means "inlet found, credentials accepted";
            401/403 mean rejected credentials, 404 an unknown inlet.

Access is read from the broker's answers, not from its ACLs (``DescribeAcls`` is an admin right): a
topic or group the principal may not describe answers TOPIC/GROUP_AUTHORIZATION_FAILED (a regex
subscription does not see such topics at all), and Kafka ≥ 2.3 lists the operations the principal
may do on each topic and group (KIP-430); a broker that does not (tansu) is trusted on describe.

Secrets never appear in the output: every line goes through :func:`connector.telemetry.logs.redact`, with
the client secret and the token registered, and the secret is shown as ``**********``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import httpx
from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient, ClusterMetadata, ConfigResource, ResourceType
from pydantic_settings import SettingsError

from connector.config import ConfigError, DecodeConfig, Settings, load_settings, strip_userinfo
from connector.decode.registry import client_config
from connector.delivery.egress import describe_http_error
from connector.delivery.governor import share
from connector.errors import AuthFailure, TransientError
from connector.kafka.source import producer_config, subscribed_partitions, subscription_matcher
from connector.pipeline import assembly
from connector.telemetry.logs import redact, register_secret, register_settings_secrets

MASK = "**********"
Status = Literal["pass", "fail", "skip"]
_MARK = {"pass": "✓", "fail": "✗", "skip": "–"}
_EMPTY_BATCH = b'{"messages":[]}'


@dataclass(frozen=True, slots=True)
class Result:
    name: str
    status: Status
    detail: str

    def line(self) -> str:
        return f"{_MARK[self.status]} {self.name:<9} {redact(self.detail)}"


def run_checks(config: str | None, timeout: float = 10.0) -> list[Result]:
    try:
        settings = load_settings(config)
    except (ConfigError, SettingsError) as exc:  # SettingsError: an env value that is not valid JSON
        return [Result("config", "fail", str(exc))]
    secret = settings.aep.ims.client_secret.get_secret_value()
    register_secret(secret)
    register_settings_secrets(settings)  # Kafka SASL/TLS, registry credentials, proxy password
    results = [Result("config", "pass", f"{config or '(environment only)'} is valid")]
    results += _kafka(settings, timeout)
    results.append(_registry(settings.decode, timeout))
    with assembly.aep_http(settings, timeout=timeout) as client:
        token_result, token = _ims(settings, client)
        results.append(token_result)
        results.append(_inlet(settings, client, token, token_result.status == "fail"))
    return results


def render(results: list[Result]) -> tuple[str, int]:
    """The report and the exit code: 0 when nothing failed, 2 for an invalid config, else 1."""
    lines = [r.line() for r in results]
    failed = sum(r.status == "fail" for r in results)
    if failed:
        lines.append(f"{failed} of {len(results)} checks failed.")
    else:
        lines.append(f"All {len(results)} checks passed.")
    code = 0 if not failed else 2 if results[0].name == "config" and results[0].status == "fail" else 1
    return "\n".join(lines), code


# -- Kafka ------------------------------------------------------------------------------------------
def _quiet_logger() -> logging.Logger:
    """librdkafka would print connection errors on stderr; the verdict says it once, clearly."""
    logger = logging.getLogger("connector.tools.check.librdkafka")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return logger


def _kafka(s: Settings, timeout: float) -> list[Result]:
    bootstrap = s.kafka.bootstrap_servers
    conf = producer_config(s.kafka)
    errors: list[str] = []  # librdkafka's own verdicts (a SASL/TLS failure says more than "transport failure")
    admin = AdminClient({**conf, "logger": _quiet_logger(), "error_cb": lambda err: errors.append(err.str())})
    if "oauth_cb" in conf:
        admin.poll(0)  # the token callback (MSK IAM) is served from poll()
    try:
        meta = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        admin.poll(0)  # deliver pending error callbacks
        auth = next((e for e in errors if "SASL" in e or "SSL" in e or "uthenticat" in e), None)
        why = f"{_kafka_error(exc)}; {auth}" if auth else _kafka_error(exc)
        protocol = s.kafka.security.protocol
        return [
            Result("kafka", "fail", f"{bootstrap} ({protocol}) not reachable within {timeout:.0f}s: {why}"),
            Result("topics", "skip", "Kafka not reachable"),
            Result("dlq", "skip", "Kafka not reachable"),
            Result("group", "skip", "Kafka not reachable"),
            Result("budget", "skip", "Kafka not reachable"),
        ]
    topics = sorted(t for t in meta.topics if not t.startswith("__"))
    kafka = Result("kafka", "pass", f"{bootstrap} ({s.kafka.security.protocol}): {len(meta.brokers)} broker(s), "
                                    f"{len(topics)} topic(s)")
    partitions = subscribed_partitions(meta, s.kafka.topics)
    subscription = _subscription(s.kafka.topics, topics, s.kafka.dlq_topic)
    return [kafka, _topic_access(admin, subscription, s.kafka.topics, topics, timeout), _dlq(admin, meta, s, timeout),
            _group(admin, s.kafka.group_id, timeout), _budget(s, partitions)]


def _budget(s: Settings, partitions: int) -> Result:
    """The send budget (connector/delivery/governor.py) and what one replica gets of it."""
    d = s.delivery
    if not d.max_messages_per_s and not d.max_profile_messages_per_s:
        return Result("budget", "skip", "no delivery.max_messages_per_s: sends are limited by the inlet only")
    parts = []
    for name, budget in (("messages", d.max_messages_per_s), ("profile records", d.max_profile_messages_per_s)):
        if budget:
            parts.append(f"{budget:g} {name}/s for the group")
    per = (f"; each replica sends its share of the partitions' share: with all {partitions} partitions "
           f"{d.max_messages_per_s or d.max_profile_messages_per_s:g}/s, with 1 of {partitions} "
           f"{share(d.max_messages_per_s or d.max_profile_messages_per_s, 1, partitions):.1f}/s") if partitions else ""
    return Result("budget", "pass", ", ".join(parts) + per)


def _subscription(subscription: list[str], topics: list[str], dlq: str) -> Result:
    matches = subscription_matcher(subscription)
    matched = [t for t in topics if matches(t)]
    missing = [t for t in subscription if not t.startswith("^") and t not in topics]
    wanted = ", ".join(subscription)
    if matches(dlq):
        return Result("topics", "fail", f"the subscription {wanted} matches the dead-letter topic {dlq}: "
                                        "dead letters would be consumed again")
    if missing:
        return Result("topics", "fail", f"topic(s) not found: {', '.join(missing)}")
    if not matched:
        return Result("topics", "fail", f"{wanted} matches no topic yet: nothing to consume")
    shown = ", ".join(matched[:5]) + (f" (+{len(matched) - 5} more)" if len(matched) > 5 else "")
    return Result("topics", "pass", f"{wanted} matches {len(matched)} topic(s): {shown}")


_SEE = "(docs/security.md, Kafka identities and ACLs)"


def _describe_topics(admin: AdminClient, names: list[str], timeout: float) -> dict[str, tuple[str | None, set[str] | None]]:
    """Per topic: the error's name (None: described) and the operations the principal may do on it
    (None: the broker does not say)."""
    if not names:
        return {}
    futures = admin.describe_topics(TopicCollection(names), include_authorized_operations=True,
                                    request_timeout=timeout)
    out: dict[str, tuple[str | None, set[str] | None]] = {}
    for name, future in futures.items():
        try:
            described = future.result(timeout)
        except KafkaException as exc:
            out[name] = (_error_name(exc), None)
            continue
        ops = described.authorized_operations
        out[name] = (None, None if ops is None else {op.name for op in ops})
    return out


def _lacks(ops: set[str] | None, operation: str) -> bool:
    return ops is not None and operation not in ops and "ALL" not in ops


def _names(topics: list[str]) -> str:
    return ", ".join(topics[:5]) + (f" (+{len(topics) - 5} more)" if len(topics) > 5 else "")


def _topic_access(admin: AdminClient, verdict: Result, subscription: list[str], topics: list[str],
                  timeout: float) -> Result:
    """The subscription's verdict, with what the broker says about the principal's access."""
    if verdict.status == "fail":
        missing = [t for t in subscription if not t.startswith("^") and t not in topics]
        denied = [t for t, (err, _) in _describe_topics(admin, missing, timeout).items()
                  if err == "TOPIC_AUTHORIZATION_FAILED"]
        if denied:
            return Result("topics", "fail", f"not authorized to describe topic(s) {_names(denied)} "
                                            f"(TOPIC_AUTHORIZATION_FAILED): grant the connector's principal READ "
                                            f"and DESCRIBE on them {_SEE}")
        if "matches no topic" in verdict.detail:
            return Result("topics", "fail", verdict.detail + "; create the topics, or grant the connector's "
                                            f"principal DESCRIBE and READ on them if they exist {_SEE}")
        return verdict
    matches = subscription_matcher(subscription)
    described = _describe_topics(admin, [t for t in topics if matches(t)], timeout)
    failed = sorted(f"{t} ({err})" for t, (err, _) in described.items() if err)
    if failed:
        return Result("topics", "fail", f"cannot describe {_names(failed)} {_SEE}")
    unreadable = sorted(t for t, (_, ops) in described.items() if _lacks(ops, "READ"))
    if unreadable:
        return Result("topics", "fail", f"no READ on topic(s) {_names(unreadable)}: grant the connector's "
                                        f"principal READ and DESCRIBE on them {_SEE}")
    return verdict


def _dlq(admin: AdminClient, meta: ClusterMetadata, s: Settings, timeout: float) -> Result:
    name = s.kafka.dlq_topic
    topic = meta.topics.get(name)
    if topic is not None:
        if topic.error is not None:
            return Result("dlq", "fail", f"{name}: {topic.error.str()}")
        leaderless = [p for p, pm in topic.partitions.items() if pm.leader < 0]
        if leaderless:
            return Result("dlq", "fail", f"{name}: partition(s) {leaderless} have no leader: not writable")
        _, ops = _describe_topics(admin, [name], timeout).get(name, (None, None))
        if _lacks(ops, "WRITE"):
            return Result("dlq", "fail", f"{name}: no WRITE on the dead-letter topic: grant the connector's "
                                         f"principal WRITE and DESCRIBE on topic {name} {_SEE}")
        return Result("dlq", "pass", f"{name} exists ({len(topic.partitions)} partition(s))")
    err, _ = _describe_topics(admin, [name], timeout).get(name, (None, None))
    if err == "TOPIC_AUTHORIZATION_FAILED":
        return Result("dlq", "fail", f"{name}: not authorized to describe the dead-letter topic "
                                     f"(TOPIC_AUTHORIZATION_FAILED): grant the connector's principal WRITE and "
                                     f"DESCRIBE on topic {name} {_SEE}")
    if _auto_create(admin, meta, timeout):
        return Result("dlq", "pass", f"{name} does not exist yet; the broker creates it with the first dead letter "
                                     "(auto.create.topics.enable=true)")
    return Result("dlq", "fail", f"dead-letter topic {name} does not exist: create it before the first record "
                                 "(the first dead letter would stop the connector, exit 6; docs/going-live.md)")


def _auto_create(admin: AdminClient, meta: ClusterMetadata, timeout: float) -> bool:
    """Whether the broker says it creates topics on first use (unknown, e.g. without DescribeConfigs: no)."""
    if not meta.brokers:
        return False
    resource = ConfigResource(ResourceType.BROKER, str(meta.controller_id if meta.controller_id >= 0
                                                       else next(iter(meta.brokers))))
    try:
        configs = next(iter(admin.describe_configs([resource], request_timeout=timeout).values())).result(timeout)
    except KafkaException:
        return False
    entry = configs.get("auto.create.topics.enable")
    return entry is not None and str(entry.value).lower() == "true"


def _group(admin: AdminClient, group: str, timeout: float) -> Result:
    future = admin.describe_consumer_groups([group], include_authorized_operations=True,
                                            request_timeout=timeout)[group]
    try:
        described = future.result(timeout)
    except KafkaException as exc:
        err = _error_name(exc)
        if err == "GROUP_AUTHORIZATION_FAILED":
            return Result("group", "fail", f"{group}: not authorized (GROUP_AUTHORIZATION_FAILED): grant the "
                                           f"connector's principal READ on group {group} {_SEE}")
        return Result("group", "fail", f"{group}: {_kafka_error(exc)}")
    ops = described.authorized_operations
    if _lacks(None if ops is None else {op.name for op in ops}, "READ"):
        return Result("group", "fail", f"{group}: no READ on the consumer group: grant the connector's principal "
                                       f"READ on group {group} {_SEE}")
    state = described.state.name.lower() if described.state is not None else "unknown"
    return Result("group", "pass", f"{group}: {state}, {len(described.members)} member(s)")


def _error_name(exc: KafkaException) -> str:
    err = exc.args[0] if exc.args else None
    return err.name() if isinstance(err, KafkaError) else str(exc)


def _kafka_error(exc: KafkaException) -> str:
    err = exc.args[0] if exc.args else None
    return err.str() if hasattr(err, "str") else str(exc)


# -- HTTP dependencies ------------------------------------------------------------------------------
def _registry(decode: DecodeConfig, timeout: float) -> Result:
    if not decode.schema_registry_url:
        return Result("registry", "skip", "no decode.schema_registry_url: Confluent wire-format records "
                                          "would be dead-lettered")
    # The connector's own client and settings (credentials, TLS); the URL never carries userinfo.
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    target = f"{strip_userinfo(decode.schema_registry_url).rstrip('/')}/subjects"
    auth = (" (basic auth)" if decode.schema_registry_username else
            " (bearer token)" if decode.schema_registry_bearer_token.get_secret_value() else "")
    try:
        client = SchemaRegistryClient({**client_config(decode), "timeout": timeout, "max.retries": 0})
        subjects = client.get_subjects()
    except SchemaRegistryError as exc:
        return Result("registry", "fail", f"{target}{auth} answered HTTP {exc.http_status_code}")
    except Exception as exc:  # noqa: BLE001 - connection and TLS errors come as several types
        return Result("registry", "fail", f"{target}{auth} not reachable: {describe_http_error(exc)}")
    if not isinstance(subjects, list):
        return Result("registry", "fail", f"{target} did not answer a list of subjects")
    return Result("registry", "pass", f"{target}{auth}: {len(subjects)} subject(s)")


def _ims(s: Settings, client: httpx.Client) -> tuple[Result, str | None]:
    ims, tokens = s.aep.ims, assembly.token_provider(s, client)  # the pipeline's provider, as it will run
    if tokens is None:
        return Result("ims", "skip", "aep.authentication_required is false"), None
    who = f"client_id {ims.client_id} (client_secret {MASK})"
    try:
        token = tokens.token()
    except AuthFailure as exc:
        return Result("ims", "fail", f"{exc} for {who}"), None
    except TransientError as exc:
        return Result("ims", "fail", f"{ims.url}: {exc}"), None
    return Result("ims", "pass", f"token obtained from {ims.url} for {who}"), token


def _inlet(s: Settings, client: httpx.Client, token: str | None, ims_failed: bool) -> Result:
    url = s.aep.batch_url
    if ims_failed:
        return Result("inlet", "skip", f"{url}: not probed without an IMS token")
    headers = {"Content-Type": "application/json", "x-sandbox-name": s.aep.sandbox, "x-gw-ims-org-id": s.aep.org_id}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        resp = client.post(url, content=_EMPTY_BATCH, headers=headers)
    except httpx.HTTPError as exc:
        return Result("inlet", "fail", f"{url} not reachable: {describe_http_error(exc)}")
    status = resp.status_code
    text = resp.text[:300].replace("\n", " ")
    if status in (200, 207) or (status == 400 and "not found" not in text.lower()):
        return Result("inlet", "pass", f"{url}: inlet found, credentials accepted "
                                       f"(empty probe batch answered {status}; nothing written)")
    if status in (401, 403):
        return Result("inlet", "fail", f"{url}: credentials rejected (HTTP {status}): check the org, sandbox "
                                       "and the inlet's authentication")
    if status in (400, 404):
        return Result("inlet", "fail", f"{url}: inlet not found (HTTP {status}): check aep.inlet_id and aep.dcs_url")
    return Result("inlet", "fail", f"{url}: unexpected HTTP {status}: {text}")
