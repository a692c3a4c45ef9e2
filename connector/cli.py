"""``capillary-aep``: the command line.

    run              the connector (Kafka → AEP)
    ingest           the Capillary webhook ingress (HTTP → Kafka)
    check            validate the config and reach Kafka, the registry, IMS and the inlet
    emulator         the local AEP + IMS + Schema Registry emulator
    produce-samples  publish sample Capillary events to Kafka
    demo             broker + emulator + samples + connector, then a summary
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from connector.config import ConfigError, Settings, load_settings


def _load(config: str | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="capillary-aep-connector")
def main() -> None:
    """Stream Capillary loyalty events from Kafka into Adobe Experience Platform."""


@main.command()
@click.option("--config", "-c", type=click.Path(dir_okay=False), envvar="CAPILLARY_AEP_CONFIG",
              help="TOML configuration file (env CAPILLARY_AEP_CONFIG).")
def run(config: str | None) -> None:
    """Run the connector until SIGTERM/SIGINT, then drain and commit.

    Exit codes: 0 stopped cleanly; 2 invalid configuration; 3 Schema Registry unreachable; 4 fatal
    consumer error; 5 transform workers crash in a loop; 6 dead-letter topic unusable; 7 the sender
    keeps failing. Every code commits what was acknowledged, and nothing else."""
    import logging
    import os

    from connector.app import run_connector

    code = run_connector(_load(config))
    # The pipeline has committed and closed the consumer. A sender thread may still sit in an HTTP
    # request (up to delivery.request_timeout_s) whose batch was abandoned: interpreter exit would
    # wait for it and break the shutdown bound (drain_timeout_s + 5 s), so leave now.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@main.command()
@click.option("--config", "-c", type=click.Path(dir_okay=False), envvar="CAPILLARY_AEP_CONFIG",
              help="TOML configuration file (env CAPILLARY_AEP_CONFIG).")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for each dependency.")
def check(config: str | None, timeout: float) -> None:
    """Validate the config and reach Kafka, the Schema Registry, IMS and the inlet (exit 0: all good)."""
    from connector.check import render, run_checks

    report, code = render(run_checks(config, timeout))
    click.echo(report)
    sys.exit(code)


@main.command()
@click.option("--config", "-c", type=click.Path(dir_okay=False), envvar="CAPILLARY_INGEST_CONFIG",
              help="TOML configuration file (env CAPILLARY_INGEST_CONFIG).")
def ingest(config: str | None) -> None:
    """Run the Capillary webhook ingress (POST /capillary/events → Kafka) until SIGTERM/SIGINT."""
    from connector.ingest.app import run_ingest
    from connector.ingest.config import IngestSettings

    try:
        settings = load_settings(config, IngestSettings)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    sys.exit(run_ingest(settings))


@main.command(context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def emulator(args: tuple[str, ...]) -> None:
    """Run the AEP streaming inlet + IMS + Schema Registry emulator (--help for its options)."""
    from connector.emulator.__main__ import main as emulator_main

    emulator_main(list(args))


@main.command("produce-samples")
@click.option("--bootstrap", default="127.0.0.1:9092", show_default=True)
@click.option("--count", "-n", default=300, show_default=True)
@click.option("--encoding", type=click.Choice(["avro-registry", "avro-single", "json", "mixed"]), default="mixed",
              show_default=True)
@click.option("--registry-url", default="", help="Schema Registry URL (needed for avro-registry).")
@click.option("--seed", default=1, show_default=True)
@click.option("--partitions", default=4, show_default=True)
def produce_samples(bootstrap: str, count: int, encoding: str, registry_url: str, seed: int, partitions: int) -> None:
    """Publish realistic sample Capillary events, keyed by customer id."""
    from connector.produce import produce_events
    from connector.samples import generate_events

    events = generate_events(count, seed=seed)
    counts = produce_events(bootstrap, events, encoding, registry_url=registry_url, partitions=partitions)
    for topic, n in sorted(counts.items()):
        click.echo(f"{n:8d}  {topic}")
    click.echo(f"{sum(counts.values()):8d}  events published ({encoding})")


@main.command()
@click.option("--count", "-n", default=400, show_default=True, help="Sample events to publish.")
@click.option("--workdir", default=".demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--timeout", default=180.0, show_default=True, help="Seconds to wait for every event.")
def demo(count: int, workdir: str, timeout: float) -> None:
    """Embedded broker + emulator + sample events + the connector, ending in a summary."""
    from connector.demo import run_demo

    sys.exit(run_demo(count, Path(workdir), timeout))


@main.command()
@click.argument("file", type=click.File("rb"))
@click.option("--config", "-c", type=click.Path(dir_okay=False), default=None,
              help="Use this configuration's routes and identity settings (default: placeholders).")
def transform(file: object, config: str | None) -> None:
    """Dry run: print the XDM envelopes FILE's events would become (JSON lines or Avro; - for stdin)."""
    from connector.dryrun import dry_run
    from connector.samples import sample_xdm_config
    from connector.transform import Transformer

    if config:
        settings = _load(config)
        transformer = Transformer(settings.xdm, org_id=settings.aep.org_id, source_name=settings.aep.source_name)
    else:
        transformer = Transformer(sample_xdm_config(), org_id="EXAMPLE0RG@AdobeOrg", source_name="dry-run")
    out = click.get_binary_stream("stdout")
    sent, rejected = dry_run(file.read(), transformer, out, sys.stderr)  # type: ignore[attr-defined]
    click.echo(f"{sent} envelopes, {rejected} records would be dead-lettered", err=True)


@main.group()
def dlq() -> None:
    """Dead-letter topic tools."""


def _parse_time(value: str | None) -> int | None:
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    from datetime import datetime, timezone

    when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return int(when.timestamp() * 1000)


@dlq.command()
@click.option("--config", "-c", type=click.Path(dir_okay=False), envvar="CAPILLARY_AEP_CONFIG")
@click.option("--reason", multiple=True, help="Only letters with this dlq.reason (repeatable).")
@click.option("--stage", multiple=True, type=click.Choice(["decode", "transform", "validate", "deliver"]))
@click.option("--since", default=None, help="Dead-lettered at or after (ISO 8601 or epoch ms).")
@click.option("--until", default=None, help="Dead-lettered before (ISO 8601 or epoch ms).")
@click.option("--to-topic", default=None, help="Publish here instead of each letter's source topic.")
@click.option("--direct", is_flag=True, help="Deliver straight to AEP instead of re-publishing to Kafka.")
@click.option("--limit", type=int, default=None)
@click.option("--from-beginning", is_flag=True, help="Ignore the replay progress committed by earlier runs.")
@click.option("--dry-run", is_flag=True, help="Only count what would be replayed.")
def replay(config: str | None, reason: tuple[str, ...], stage: tuple[str, ...], since: str | None,
           until: str | None, to_topic: str | None, direct: bool, limit: int | None, from_beginning: bool,
           dry_run: bool) -> None:
    """Re-publish (or deliver) dead letters once their cause is fixed."""
    from connector.replay import ReplayFilter, direct_delivery
    from connector.replay import replay as run_replay

    settings = _load(config)
    from connector.logs import register_settings_secrets

    register_settings_secrets(settings)  # librdkafka and HTTP errors may be logged
    flt = ReplayFilter(frozenset(reason), frozenset(stage), _parse_time(since), _parse_time(until))
    report = run_replay(settings, flt, to_topic=to_topic, dry_run=dry_run, from_beginning=from_beginning,
                        limit=limit, direct=direct_delivery(settings) if direct else None)
    click.echo(f"read {report.read} dead letters from {settings.kafka.dlq_topic}; {report.matched} matched")
    for r, n in sorted(report.by_reason.items()):
        click.echo(f"  {n:6d}  {r}")
    if report.truncated:
        click.echo(f"{len(report.truncated)} letters were too large for the dead-letter topic and hold only part of "
                   "their value: not replayed; re-read these source offsets (if still retained):")
        for where in report.truncated[:50]:
            click.echo(f"  {where}")
    if not dry_run:
        click.echo(f"replayed {report.replayed}, failed {report.failed}")
    sys.exit(1 if report.failed else 0)


if __name__ == "__main__":
    main()
