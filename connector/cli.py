"""``capillary-aep``: the command line.

    run              the connector (Kafka → AEP)
    ingest           the Capillary webhook ingress (HTTP → Kafka)
    check            validate the config and reach Kafka, the registry, IMS and the inlet
    emulator         the local AEP + IMS + Schema Registry emulator
    produce-samples  publish sample Capillary events to Kafka
    demo             broker + emulator + samples + connector, then a summary
    xdm export       the XDM field groups and schemas the mapping needs, as files
    provision        create what the AEP side is missing (namespaces ... dataflows), idempotently
    backfill         history through AEP batch ingestion, then hand the stop point to the stream
"""

from __future__ import annotations

import sys
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import click

from connector.config import ConfigError, Settings, load_settings
from connector.errors import Stage

if TYPE_CHECKING:
    from connector.tools.replay import ReplayReport


def _dev_tooling(what: str) -> None:
    """The demo, the emulator and the sample producer live in connector.dev, with the dev extra's
    dependencies: say so in one line where they are not installed."""
    try:
        import jsonschema  # noqa: F401 - the emulator's one extra dependency
    except ImportError:
        click.echo(f"error: {what} is development tooling: pip install 'capillary-aep-connector[dev]' "
                   "(or [emulator])", err=True)
        sys.exit(2)


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
    consumer error; 5 pipeline processes keep dying (with no record to blame); 6 dead-letter topic
    unusable; 7 the sender keeps failing; 11 an unexpected error (logged with its cause). A pipeline
    process stopping with one of these codes stops the others, and the replica exits with it. Every
    code commits what was acknowledged, and nothing else."""
    import logging
    import os

    from connector.errors import ExitCode
    from connector.runtime.app import run_connector

    settings = _load(config)
    try:
        code = run_connector(settings)
    except ConfigError as exc:  # found at start, e.g. metrics.listen cannot be bound
        logging.getLogger("connector").error("%s", exc)
        code = ExitCode.CONFIG
    except Exception:  # anything else: one log line with its cause (JSON when logs are), a documented code
        logging.getLogger("connector").exception("unexpected error; exiting with code %d", ExitCode.INTERNAL)
        code = ExitCode.INTERNAL
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
    from connector.tools.check import render, run_checks

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
    _dev_tooling("the emulator")
    from connector.dev.emulator.__main__ import main as emulator_main

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
    from connector.dev.produce import produce_events
    from connector.dev.samples import generate_events

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
    _dev_tooling("the demo")
    from connector.dev.demo import run_demo

    sys.exit(run_demo(count, Path(workdir), timeout))


@main.command()
@click.argument("file", type=click.File("rb"))
@click.option("--config", "-c", type=click.Path(dir_okay=False), default=None,
              help="Use this configuration's routes and identity settings (default: placeholders).")
def transform(file: object, config: str | None) -> None:
    """Dry run: print the XDM envelopes FILE's events would become (a JSON document, an array, JSON
    lines or Avro; - for stdin). Exit 1 when a record would be dead-lettered, 2 on a bad config."""
    from connector.config import BatchConfig, DecodeConfig, OfflineSettings
    from connector.processing.record import ProcessorSpec, RecordProcessor
    from connector.tools.dryrun import dry_run, placeholder_xdm_config

    if config:
        try:
            spec = ProcessorSpec.from_settings(load_settings(config, OfflineSettings))  # no secret needed
        except ConfigError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
    else:
        spec = ProcessorSpec(DecodeConfig(), placeholder_xdm_config(), "EXAMPLE0RG@AdobeOrg", "dry-run",
                             BatchConfig().max_record_size)
    out = click.get_binary_stream("stdout")
    sent, rejected = dry_run(file.read(), RecordProcessor(spec), out, sys.stderr)  # type: ignore[attr-defined] # click.File
    click.echo(f"{sent} envelopes, {rejected} records would be dead-lettered", err=True)
    if rejected:
        sys.exit(1)  # a record that would be a dead letter is what a dry run is for: say so to scripts


@main.group()
def xdm() -> None:
    """XDM artifacts generated from the mapping."""


@xdm.command("export")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--config", "-c", type=click.Path(dir_okay=False), default=None, envvar="CAPILLARY_AEP_CONFIG",
              help="Take the tenant id and identity namespaces from this configuration (default: capillary).")
@click.option("--tenant", default=None, help="Tenant id (the _<tenant> namespace); overrides the config's.")
def xdm_export(directory: str, config: str | None, tenant: str | None) -> None:
    """Write the Schema Registry and Identity Service request bodies to DIRECTORY (see its README.md)."""
    from connector.config import ExportSettings, ProvisionXdm
    from connector.provision.export import export

    names = ProvisionXdm()
    if config:
        try:
            names = load_settings(config, ExportSettings).xdm  # offline: no credentials needed
        except ConfigError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
    ident = names.identity
    for path in export(Path(directory), tenant or names.tenant_id, ident.customer_id_namespace,
                       ident.external_id_namespace, ident.card_namespace):
        click.echo(str(path))


@main.command()
@click.option("--config", "-c", type=click.Path(dir_okay=False), envvar="CAPILLARY_AEP_CONFIG",
              help="The connector's TOML configuration: [aep] org, sandbox, IMS credentials and platform_url; "
                   "[xdm] tenant and namespaces. Inlet and routes may be missing.")
@click.option("--dry-run", is_flag=True, help="Look everything up and print the plan; create nothing.")
@click.option("--write", "write_to", type=click.Path(dir_okay=False), default=None,
              help="Also write the resulting configuration values (TOML) to this file.")
@click.option("--prefix", default="Capillary loyalty", show_default=True,
              help="Names and titles of what is created (and looked up on the next run).")
def provision(config: str | None, dry_run: bool, write_to: str | None, prefix: str) -> None:
    """Create what the AEP sandbox is missing, in order, never twice: identity namespaces, tenant field
    groups, schemas (both enabled for Profile), datasets enabled for Profile and Identity, the HTTP API
    streaming connection and its two dataflows. Prints the connector's AEP settings as TOML. Honours
    aep.http (proxy, CA bundle, client certificate) as the connector does.

    Exit codes: 0 done (or planned, with --dry-run); 2 invalid configuration; 8 a Platform API call
    failed, or an object under provision's name is not what provision makes (the message says what differs)."""
    from connector.config import ProvisionSettings, strip_userinfo
    from connector.provision.artifacts import Names
    from connector.provision.plan import Provisioner, Request, config_snippet, render_steps
    from connector.provision.platform import Platform, PlatformError
    from connector.telemetry.logs import redact, register_secret, register_settings_secrets

    try:
        settings = load_settings(config, ProvisionSettings)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if write_to and not Path(write_to).resolve().parent.is_dir():  # say so before anything is created
        click.echo(f"error: --write {write_to}: its directory does not exist", err=True)
        sys.exit(2)
    aep, ident = settings.aep, settings.xdm.identity
    # AEP's answers are printed as they come: mask our own secrets in them, as the logs do.
    register_settings_secrets(settings)
    register_secret(aep.ims.client_secret.get_secret_value())
    request = Request(settings.xdm.tenant_id, ident.customer_id_namespace, ident.external_id_namespace,
                      ident.card_namespace, Names(prefix), aep.authentication_required)
    platform = Platform(aep.platform_url, aep.org_id, aep.sandbox, aep.ims, aep.http)
    click.echo(f"{'Planning' if dry_run else 'Provisioning'} sandbox {aep.sandbox!r} of {aep.org_id} "
               f"at {strip_userinfo(aep.platform_url)}")
    provisioner = Provisioner(platform, request, dry_run=dry_run, progress=lambda s: click.echo(render_steps([s])))
    try:
        result = provisioner.run()
    except PlatformError as exc:
        click.echo(f"error: {redact(str(exc))}", err=True)
        sys.exit(8)
    finally:
        platform.close()
    made = len(result.created)
    click.echo(f"{made} created or updated, {len(result.steps) - made} already there"
               + (" (dry run: nothing was changed)" if dry_run else ""))
    for note in result.notes:
        click.echo(f"note: {note}")
    snippet = config_snippet(result, settings.xdm.tenant_id)
    click.echo("\n" + snippet)
    if write_to:
        try:
            Path(write_to).write_text(snippet)
        except OSError as exc:  # the values are printed above: nothing is lost
            click.echo(f"error: --write {write_to}: {exc.strerror}", err=True)
            sys.exit(2)
        click.echo(f"written to {write_to}")


@main.group()
def dlq() -> None:
    """Dead-letter topic tools."""


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_TIME_FORMS = ("ISO 8601 (2026-12-01, 2026-12-01T08:00:00Z, 2026-12-01T08:00:00+05:30), epoch milliseconds, "
               "or a duration ago (90s, 30m, 24h, 7d, 2w)")


def _parse_time(value: str | None, now_ms: int | None = None) -> int | None:
    """Epoch milliseconds from ISO 8601 (UTC unless it names a zone), epoch ms, or a duration ago;
    ValueError (with the accepted forms) for anything else."""
    if value is None:
        return None
    import time
    from datetime import datetime

    text = value.strip()
    if text.isdigit():
        return int(text)
    unit = _DURATION_UNITS.get(text[-1:].lower())
    if unit and text[:-1].isdigit():
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        return now - int(text[:-1]) * unit * 1000
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value!r} is not a time: use {_TIME_FORMS}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


class _TimeParam(click.ParamType):
    name = "TIME"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int | None:
        if value is None or isinstance(value, int):
            return value  # type: ignore[return-value] # click hands the default through unconverted
        try:
            return _parse_time(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class _OneLineErrors(click.Command):
    """A bad option value ends the command with one line (``error: …``, exit 2), not click's usage block."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: object) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)  # type: ignore[arg-type] # click types **extra loosely
        except click.UsageError as exc:
            click.echo(f"error: {exc.format_message()} (see --help)", err=True)
            sys.exit(2)


class _Progress:
    """Replay progress on stderr: a bar on a terminal, else a line at most every ``every_s`` seconds."""

    def __init__(self, stream: TextIO, every_s: float = 5.0) -> None:
        self.stream, self.every_s = stream, every_s
        self.tty = stream.isatty()
        self._bar: Any = None  # click's ProgressBar, entered on the first report
        self._shown = 0
        self._last = 0.0

    @staticmethod
    def line(r: ReplayReport) -> str:
        return (f"read {r.read:,} of {r.total:,} letters, re-published {r.replayed:,}, "
                f"skipped {r.skipped + len(r.truncated):,}, failed {r.failed:,}")

    def __call__(self, report: ReplayReport) -> None:
        import time

        if self.tty:
            if self._bar is None:
                self._bar = click.progressbar(length=max(1, report.total), label="dlq replay", file=self.stream,
                                              show_pos=True)
                self._bar.__enter__()
            self._bar.label = self.line(report)
            self._bar.update(report.read - self._shown)
            self._shown = report.read
            return
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            click.echo(self.line(report), file=self.stream)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)


@dlq.command(cls=_OneLineErrors)
@click.option("--config", "-c", type=click.Path(dir_okay=False), envvar="CAPILLARY_AEP_CONFIG",
              help="The connector's TOML configuration (env CAPILLARY_AEP_CONFIG): Kafka, the dead-letter topic, "
                   "and for --direct the AEP settings.")
@click.option("--reason", multiple=True, help="Only letters with this dlq.reason, e.g. aep_400 (repeatable).")
@click.option("--stage", multiple=True, type=click.Choice([s.value for s in Stage]),
              help="Only letters dead-lettered at this stage (repeatable).")
@click.option("--since", type=_TimeParam(), default=None,
              help="Dead-lettered at or after this time: ISO 8601 (UTC unless a zone is given), epoch ms, or a "
                   "duration ago such as 24h or 7d.")
@click.option("--until", type=_TimeParam(), default=None, help="Dead-lettered before this time (same forms as --since).")
@click.option("--to-topic", default=None, help="Publish here instead of each letter's source topic.")
@click.option("--direct", is_flag=True, help="Deliver straight to AEP instead of re-publishing to Kafka.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Replay at most this many letters; the rest stay for the next run.")
@click.option("--from-beginning", is_flag=True, help="Ignore the replay progress committed by earlier runs.")
@click.option("--dry-run", is_flag=True, help="Only count what would be replayed (commits nothing).")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show progress on stderr: a bar on a terminal, else a line every 5 s.")
def replay(config: str | None, reason: tuple[str, ...], stage: tuple[str, ...], since: int | None,
           until: int | None, to_topic: str | None, direct: bool, limit: int | None, from_beginning: bool,
           dry_run: bool, progress: bool) -> None:
    """Re-publish (or deliver) dead letters once their cause is fixed.

    Streams the dead-letter topic from where the last replay stopped to its end, a window at a
    time (never loading it whole), committing as it goes.

    Exit codes: 0 every matching letter replayed (or counted, with --dry-run); 1 some letters failed
    again (they stay in the dead-letter topic; progress is not committed past them); 2 invalid
    configuration or option; 4 the dead-letter topic cannot be read (Kafka unreachable,
    authorization)."""
    from connector.tools.replay import ReplayError, ReplayFilter, direct_delivery
    from connector.tools.replay import replay as run_replay

    if since is not None and until is not None and until <= since:
        click.echo("error: --until must be later than --since", err=True)
        sys.exit(2)
    settings = _load(config)
    from connector.telemetry.logs import register_settings_secrets

    register_settings_secrets(settings)  # librdkafka and HTTP errors may be logged
    flt = ReplayFilter(frozenset(reason), frozenset(stage), since, until)
    shown = _Progress(sys.stderr) if progress else None
    try:
        report = run_replay(settings, flt, to_topic=to_topic, dry_run=dry_run, from_beginning=from_beginning,
                            limit=limit, direct=direct_delivery(settings) if direct else None, progress=shown)
    except ReplayError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(4)
    finally:
        if shown is not None:
            shown.close()
    click.echo(f"read {report.read} dead letters from {settings.kafka.dlq_topic}; {report.matched} matched; "
               f"{report.skipped} skipped (outside the filters)")
    for r, n in sorted(report.by_reason.items()):
        click.echo(f"  {n:6d}  {r}")
    if report.truncated:
        click.echo(f"{len(report.truncated)} letters were too large for the dead-letter topic and hold only part of "
                   "their value: not replayed; re-read these source offsets (if still retained):")
        for where in report.truncated[:50]:
            click.echo(f"  {where}")
    if report.malformed:
        click.echo(f"{report.malformed} letters skipped as malformed (headers not as the connector writes them, or a "
                   "source topic this configuration does not consume):")
        for where in report.malformed_at:
            click.echo(f"  {where}")
    if not dry_run:
        click.echo(f"replayed {report.replayed}, failed {report.failed}")
    sys.exit(1 if report.failed else 0)


if __name__ == "__main__":
    main()


@main.command(cls=_OneLineErrors)
@click.option("--config", "-c", type=click.Path(dir_okay=False), envvar="CAPILLARY_AEP_CONFIG",
              help="The connector's TOML configuration (env CAPILLARY_AEP_CONFIG): Kafka, decode, [aep] with "
                   "platform_url and IMS credentials, [xdm] routes.")
@click.option("--work-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Where the staged files and the manifest live; run again with the same one to resume.")
@click.option("--from-file", "files", multiple=True, type=click.Path(dir_okay=False),
              help="Read Capillary export files (JSON lines) instead of Kafka (repeatable); no hand-over.")
@click.option("--since", type=_TimeParam(), default=None,
              help="Start at the first record at or after this time (default: the earliest offset); same forms "
                   "as dlq replay --since.")
@click.option("--dry-run", is_flag=True, help="Print what would be read, the files, batches and expected size.")
@click.option("--handover/--no-handover", default=True, show_default=True,
              help="Commit the stop point as the consumer group's offsets once every batch succeeded.")
@click.option("--retry-failed", is_flag=True, help="Load the batches AEP failed again (new batches, same files).")
@click.option("--file-size", type=click.IntRange(min=1024), default=256 * 1024 * 1024, show_default=True,
              help="Target bytes of one upload file (AEP's small-file upload takes up to 256 MB).")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Progress on stderr: a bar with rate and ETA on a terminal, else a line every 5 s.")
@click.option("--small-file-limit", type=click.IntRange(min=1), default=256 * 1024 * 1024, hidden=True)
@click.option("--chunk-size", type=click.IntRange(min=1), default=64 * 1024 * 1024, hidden=True)
@click.option("--max-files-per-batch", type=click.IntRange(1, 1500), default=1500, hidden=True)
@click.option("--poll-interval", type=click.FloatRange(min=0.0), default=5.0, hidden=True)
@click.option("--checkpoint-records", type=click.IntRange(min=1), default=50_000, hidden=True)
def backfill(config: str | None, work_dir: Path, files: tuple[str, ...], since: int | None, dry_run: bool,
             handover: bool, retry_failed: bool, file_size: int, progress: bool, small_file_limit: int,
             chunk_size: int, max_files_per_batch: int, poll_interval: float, checkpoint_records: int) -> None:
    """Load history into AEP through batch ingestion, then hand over to the stream without a gap.

    Reads the Capillary topics from the earliest offset (or --since) up to a stop point per partition
    fixed at the first run, with the stream's decode, transform and validation; dead-letters what fails
    as the stream does; merges each customer's profile updates into one record; creates a batch per
    dataset, uploads the files, completes the batches and follows their status. When every batch
    succeeded, the stop point becomes the consumer group's committed offsets (the group must not be
    running): start the connector then. Killed, it resumes from its manifest in --work-dir; run again
    when finished, it loads nothing. See docs/backfill.md.

    Exit codes: 0 loaded and handed over (or nothing left to do, or the dry run); 2 invalid
    configuration, option or work directory; 3 Schema Registry unreachable; 4 Kafka cannot be read;
    6 the dead-letter topic cannot take letters; 8 a Platform API call failed (run again to resume);
    9 a batch failed (AEP's errors are printed; the group's offsets are not moved); 10 the hand-over is
    refused (the group is running, or already has other committed offsets)."""
    from connector.backfill.progress import Progress
    from connector.backfill.run import Backfill, Options
    from connector.telemetry.logs import register_settings_secrets, setup_logging

    settings = _load(config)
    setup_logging(settings.log.level, settings.log.format)
    register_settings_secrets(settings)
    opts = Options(work_dir, list(files), since, file_size, small_file_limit, chunk_size, max_files_per_batch,
                   poll_interval, handover=handover, retry_failed=retry_failed, dry_run=dry_run,
                   checkpoint_records=checkpoint_records)
    shown = Progress(sys.stderr) if progress and not dry_run else None
    result = Backfill(settings, opts, shown).run()
    for line in result.lines:
        click.echo(line, err=line.startswith("error:"))
    sys.exit(int(result.code))
