"""``capillary-aep``: the command line.

    run              the connector (Kafka → AEP)
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
    """Run the connector until SIGTERM/SIGINT, then drain and commit."""
    from connector.app import run_connector

    sys.exit(run_connector(_load(config)))


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


if __name__ == "__main__":
    main()
