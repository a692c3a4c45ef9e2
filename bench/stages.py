"""Per-stage CPU cost of the connector's hot path, in-process, without Kafka or HTTP.

    python bench/stages.py [--events 50000] [--repeat 3] [--profile pyinstrument|cprofile]

The records are the bench's own (``EventFactory``: the realistic type mix, half Avro with registry
framing, half JSON), decoded against a Schema Registry stub. It times, in µs of CPU per event
(``time.process_time``, best of ``--repeat``):

* ``decode``     ``Decoder.decode`` per encoding;
* ``transform``  ``Transformer.transform`` (the XDM mapping, owned by the transform module), also
                 with its generated fast path off (the generic path alone) and with pre-flight
                 validation off;
* ``encode``     ``orjson.dumps`` of each envelope;
* ``pipeline``   the whole ``Pipeline`` loop (``run_once``: ingest → batch → dispatch → complete →
                 offsets) on a fake consumer, with ``Sink.deliver`` doing its own CPU work (profile
                 updates coalesced, the body built, an all-accepted 207 answer read) but sending
                 nothing; ``pipeline overhead`` is ``pipeline`` minus decode, transform and encode.

Figures from a busy box are inflated; compare runs made back to back.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent / "tests"))

from common import EventFactory, busy_box
from support import FakeMessage as Msg
from support import FakeSource

from connector.config import load_settings
from connector.decode.avro_schemas import LocalSchemas
from connector.decode.decoder import Decoder
from connector.delivery.batch import encode_body
from connector.delivery.sink import BatchResult
from connector.dev.emulator import config as em
from connector.kafka.topics import TOPIC_PREFIX


class _Registry:
    """Schema Registry stub for ``EventFactory``: ids by registration order."""

    def __init__(self) -> None:
        self.schemas: list[str] = []
        self.parsed: dict[int, Any] = {}

    def register_schema(self, _subject: str, schema: Any) -> int:
        self.schemas.append(schema.schema_str)
        return len(self.schemas)


def build(n: int) -> tuple[list[Msg], _Registry]:
    import connector.dev.produce as produce

    reg = _Registry()
    orig = produce.SampleEncoder.__init__

    def init(self: Any, schemas: LocalSchemas, registry_url: str = "") -> None:
        orig(self, schemas, "")
        self._registry = reg
        from confluent_kafka.schema_registry import Schema

        self._schema_cls = Schema

    produce.SampleEncoder.__init__ = init  # type: ignore[method-assign]
    try:
        factory = EventFactory("stub", min(n, 20_000))
    finally:
        produce.SampleEncoder.__init__ = orig  # type: ignore[method-assign]
    now = int(time.time() * 1000)
    msgs = []
    offsets: dict[tuple[str, int], int] = {}
    for i in range(n):
        topic, key, value = factory.record(i, TOPIC_PREFIX)
        part = hash(key) % 4
        off = offsets.get((topic, part), 0)
        offsets[(topic, part)] = off + 1
        msgs.append(Msg(topic, part, off, key, value, now))
    return msgs, reg


def settings(tmp: Path) -> Any:
    from common import connector_toml

    cfg = tmp / "stages.toml"
    cfg.write_text(connector_toml(bootstrap="127.0.0.1:9", emulator_url="http://127.0.0.1:9",
                                  prefix=TOPIC_PREFIX, group="stages", metrics_port=None, authenticated=False,
                                  extra="[processing]\nworkers = 0\n"))
    # workers = 0: for --ab against a build before 4ad4d77, the loop on this thread (no transform
    # worker pool); later builds have no pool, and their config ignores the key.
    return load_settings(cfg)


def run_pipeline(s: Any, msgs: list[Msg], registry: _Registry, stub: dict[str, Any] | None = None) -> float:
    """Process time of one full pipeline pass over ``msgs`` (fresh Pipeline each time)."""
    from fastavro import parse_schema

    from connector.pipeline.loop import Pipeline

    src = FakeSource(msgs, s.kafka.consume_batch, idle_sleep_s=0.001)
    p = Pipeline(s, source_factory=src.factory)
    # The registry's answer is the schema text, as connector.decode.registry returns it; the decoder's
    # per-process caches (by text) make a fresh pipeline's first record of each schema id cheap,
    # as in a long-running process. Revisions before those caches get parsed schemas instead.
    import connector.decode.decoder as decode_module

    if hasattr(decode_module, "_compiled"):
        texts = dict(enumerate(registry.schemas, start=1))
        lookup = texts.get
    else:
        parsed = registry.parsed
        for sid, text in enumerate(registry.schemas, start=1):
            if sid not in parsed:
                parsed[sid] = parse_schema(orjson.loads(text))
        lookup = parsed.get
    # Works on the stages layout and, for --ab against older revisions, on the one before it.
    processor = p.processing.processor if hasattr(p, "processing") else p.processor
    dispatch, collect = (p.delivery.dispatch, p.delivery.collect) if hasattr(p, "delivery") else (
        p._dispatch, p._collect)
    processor.decoder._registry_lookup = lookup

    sink = p.sink
    sender_cpu = hasattr(sink, "_items") and hasattr(sink, "_apply_entries")

    def deliver(records: list[Any], _cancel: Any) -> BatchResult:
        # What a sender thread does on its own CPU for one request, without the HTTP exchange:
        # the messages (profile updates coalesced), the body, and an all-accepted 207 answer read.
        if not sender_cpu:  # a revision from before the sender had these steps
            encode_body(m for r in records for m in r.messages)
            return BatchResult(records, requests=1)
        result = BatchResult(records, requests=1)
        items = sink._items(records)
        encode_body(item[1] for item in items)
        answer = orjson.dumps({"responses": [{"xactionId": f"1750-{i}"} for i in range(len(items))]})
        sink._apply_entries(items, orjson.loads(answer)["responses"], result)
        return result

    p.sink.deliver = deliver  # type: ignore[method-assign]
    if stub is not None:
        # The transform replaced by a lookup of its output: what is left is the pipeline's own cost.
        processor.transformer.transform = lambda ev: stub[ev["eventId"]]  # type: ignore[method-assign]
    # One record of each schema id first: what a long-running process has planned once.
    first: dict[bytes, bytes] = {}
    for m in msgs:
        if m._value[:1] == b"\x00":
            first.setdefault(m._value[1:5], m._value)
    for value in first.values():
        processor.decoder.decode(value)
    p.source = src.factory(s.kafka, p._on_assign, p._on_revoke, p._on_lost)
    n = len(msgs)
    t0 = time.process_time()
    deadline = time.monotonic() + 600
    while p.tracker.pending or src.pos < n:
        p.run_once()
        if time.monotonic() > deadline:
            raise RuntimeError("pipeline pass did not finish")
    # drain what is still lingering in lanes
    while p.batcher.queued() or p.delivery.inflight:
        dispatch(time.monotonic(), flush=True)
        collect()
        p._store()
    took = time.process_time() - t0
    ends: dict[tuple[str, int], int] = {}
    for m in msgs:
        ends[(m._topic, m._partition)] = m._offset + 1
    if src.stored != ends:
        raise RuntimeError("stored offsets do not reach the end of every partition")
    (p.delivery.executor if hasattr(p, "delivery") else p.executor).shutdown(wait=True)
    p.client.close()
    return took


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", choices=["pyinstrument", "cprofile"], default=None,
                    help="profile one pipeline pass instead of timing the stages")
    ap.add_argument("--stub-transform", action="store_true", help="with --profile: replace the transform by a lookup")
    ap.add_argument("--ab", metavar="REV", default=None,
                    help="compare the pipeline at git revision REV with the working tree: alternating runs "
                         "in subprocesses (--rounds each), best and median per side")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--pipeline-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    import logging
    import tempfile

    logging.basicConfig(level=logging.WARNING)
    if args.ab:
        return ab(args)
    if not args.pipeline_only:
        print(f"box: {busy_box()}", flush=True)
    msgs, registry = build(args.events)
    s = settings(Path(tempfile.mkdtemp(prefix="stages-")))
    n = len(msgs)

    if args.profile:
        if args.stub_transform:
            from connector.transform import Transformer

            dec = Decoder(LocalSchemas.load(), lambda sid: registry.schemas[sid - 1])
            tr0 = Transformer(s.xdm, org_id=em.DEMO_ORG_ID, source_name=s.aep.source_name)
            stub0 = {ev["eventId"]: tr0.transform(ev) for m in msgs for ev in dec.decode(m._value)}
        else:
            stub0 = None
        if args.profile == "pyinstrument":
            from pyinstrument import Profiler

            prof = Profiler(interval=0.0005)
            prof.start()
            run_pipeline(s, msgs, registry, stub0)
            prof.stop()
            print(prof.output_text(unicode=True, color=False, show_all=False))
        else:
            import cProfile
            import pstats

            pr = cProfile.Profile()
            pr.enable()
            run_pipeline(s, msgs, registry, stub0)
            pr.disable()
            pstats.Stats(pr).sort_stats("tottime").print_stats(30)
        return 0

    from fastavro import parse_schema

    from connector.transform import Transformer

    if args.pipeline_only:
        tr0 = Transformer(s.xdm, org_id=em.DEMO_ORG_ID, source_name=s.aep.source_name)
        dec0 = Decoder(LocalSchemas.load(), lambda sid: registry.schemas[sid - 1])
        stub0 = {ev["eventId"]: tr0.transform(ev) for m in msgs for ev in dec0.decode(m._value)}
        passes = [msgs[i:i + 5000] for i in range(0, n, 5000) if len(msgs[i:i + 5000]) == 5000]
        whole = min(run_pipeline(s, part, registry) / len(part) for _ in range(args.repeat) for part in passes)
        stubbed = min(run_pipeline(s, part, registry, stub0) / len(part) for _ in range(args.repeat) for part in passes)
        print(orjson.dumps({"whole": whole, "stubbed": stubbed}).decode())
        return 0

    decoder = Decoder(LocalSchemas.load(), lambda sid: registry.schemas[sid - 1])
    avro = [m._value for m in msgs if m._value[0] == 0]
    js = [m._value for m in msgs if m._value[0] != 0]
    decoded = [ev for m in msgs for ev in decoder.decode(m._value)]
    tr = Transformer(s.xdm, org_id=em.DEMO_ORG_ID, source_name=s.aep.source_name)
    outs = [tr.transform(ev) for ev in decoded]
    envelopes = [x.envelope for out in outs for x in out]
    from io import BytesIO

    from fastavro import schemaless_reader

    writers = {sid + 1: parse_schema(orjson.loads(text)) for sid, text in enumerate(registry.schemas)}
    readers = {sid: decoder._readers.get(w["name"]) for sid, w in writers.items()}

    def decode_with_reader(values: list[bytes]) -> None:
        # How the decoder read wire-format records before caching "reader == writer" per schema id.
        for v in values:
            sid = int.from_bytes(v[1:5], "big")
            buf = BytesIO(v)
            buf.seek(5)
            schemaless_reader(buf, writers[sid], readers[sid])

    # Each row runs on slices of ~2,000 items, round-robin with the other rows, and keeps its best
    # slice: interference from other work on the box lands on some slices, not on the minimum.
    def sliced(items: list[Any], fn: Any) -> list[Any]:
        return [(lambda chunk=items[i:i + 2000]: fn(chunk), len(items[i:i + 2000]))
                for i in range(0, len(items), 2000)]

    def decode_all(values: list[bytes]) -> None:
        for v in values:
            decoder.decode(v)

    def transform_all(events: list[dict[str, Any]]) -> None:
        for ev in events:
            tr.transform(ev)

    # The same transform with the generated fast path off (the generic path alone: the "before" of
    # issue 31) and with pre-flight validation off (what validating each record costs).
    generic = Transformer(s.xdm, org_id=em.DEMO_ORG_ID, source_name=s.aep.source_name, fast=False)
    unvalidated = Transformer(s.xdm.model_copy(update={"preflight_validation": False}), org_id=em.DEMO_ORG_ID,
                              source_name=s.aep.source_name)

    def generic_all(events: list[dict[str, Any]]) -> None:
        for ev in events:
            generic.transform(ev)

    def unvalidated_all(events: list[dict[str, Any]]) -> None:
        for ev in events:
            unvalidated.transform(ev)

    def encode_all(out: list[list[Any]]) -> None:
        for xs in out:
            for x in xs:
                orjson.dumps(x.envelope)

    plan = {
        "decode avro, reader schema passed per record (before)": sliced(avro, decode_with_reader),
        "decode avro (per Avro event)": sliced(avro, decode_all),
        "decode json (per JSON event)": sliced(js, decode_all),
        "transform": sliced(decoded, transform_all),
        "transform, generic path only (fast path off)": sliced(decoded, generic_all),
        "transform, pre-flight validation off": sliced(decoded, unvalidated_all),
        "encode (orjson per envelope)": sliced(outs, encode_all),
    }
    best = dict.fromkeys(plan, float("inf"))
    for _ in range(args.repeat):
        for k, chunks in plan.items():
            for fn, size in chunks:
                t0 = time.process_time()
                fn()
                best[k] = min(best[k], (time.process_time() - t0) / size)
    rows = dict(best)
    share = len(avro) / n
    rows["decode (mix)"] = share * rows["decode avro (per Avro event)"] + (1 - share) * rows["decode json (per JSON event)"]
    for label, key in (("", "transform"), (", generic transform", "transform, generic path only (fast path off)")):
        rows[f"decode + transform + encode{label}"] = (
            rows["decode (mix)"] + rows[key] + rows["encode (orjson per envelope)"])
    passes = [msgs[i:i + 5000] for i in range(0, n, 5000)]
    rows["pipeline (whole loop, no HTTP)"] = min(run_pipeline(s, part, registry) / len(part)
                                                 for _ in range(args.repeat) for part in passes if len(part) == 5000)
    stub = {ev["eventId"]: out for ev, out in zip(decoded, outs)}
    rows["pipeline, transform stubbed"] = min(run_pipeline(s, part, registry, stub) / len(part)
                                              for _ in range(args.repeat) for part in passes if len(part) == 5000)
    rows["pipeline overhead (stubbed loop − decode − encode)"] = (
        rows["pipeline, transform stubbed"] - rows["decode (mix)"] - rows["encode (orjson per envelope)"])
    print(f"{n:,} events, {len(envelopes) / n:.2f} XDM messages per event; µs of CPU per event "
          f"(best 2,000-item slice of {args.repeat} rounds; pipeline: best 5,000-event pass):")
    for k, v in rows.items():
        print(f"  {k:<58} {v * 1e6:8.1f}")
    print(f"  → single-core ceiling of the whole loop: {1 / rows['pipeline (whole loop, no HTTP)']:,.0f} events/s")
    declined = sum(tr.declines.values())
    print(f"  fast path declined {declined:,} of {len(decoded) * (args.repeat + 1):,} transforms "
          f"({dict(tr.declines.most_common(5))})")
    print(f"box: {busy_box()}")
    return 0


def ab(args: argparse.Namespace) -> int:
    """Interleaved A/B of the pipeline: REV (exported with ``git archive``) against the working tree."""
    import shutil
    import statistics
    import subprocess
    import tempfile

    root = Path(__file__).resolve().parent.parent
    old = Path(tempfile.mkdtemp(prefix=f"stages-ab-{args.ab}-"))
    try:
        # schemas/ moved into connector/ (package data) in 35a5630: export it only where it exists.
        top = subprocess.run(["git", "-C", str(root), "ls-tree", "--name-only", args.ab], capture_output=True,
                             text=True, check=True).stdout.split()
        archive = subprocess.run(["git", "-C", str(root), "archive", args.ab,
                                  *(p for p in ("connector", "schemas") if p in top)],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        sides = {f"{args.ab}": str(old), "working tree": ""}
        got: dict[str, list[dict[str, float]]] = {k: [] for k in sides}
        print(f"box: {busy_box()}", flush=True)
        for r in range(args.rounds):
            for name, code_root in (sides.items() if r % 2 == 0 else reversed(sides.items())):
                env = {**__import__("os").environ, "BENCH_CODE_ROOT": code_root}
                out = subprocess.run([sys.executable, __file__, "--pipeline-only", "--events", str(args.events),
                                      "--repeat", str(args.repeat)], capture_output=True, text=True, env=env,
                                     timeout=900)
                line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
                if out.returncode or not line:
                    print(out.stderr[-2000:])
                    return 1
                got[name].append(orjson.loads(line[-1]))
                print(f"  round {r + 1} {name:<14} " + "  ".join(f"{k} {v * 1e6:6.1f}" for k, v in got[name][-1].items()),
                      flush=True)
        print(f"µs of CPU per event, {args.rounds} alternating rounds (best / median):")
        for key, label in (("whole", "pipeline (whole loop, no HTTP)"), ("stubbed", "pipeline, transform stubbed")):
            cells = [f"{name}: {min(x[key] for x in got[name]) * 1e6:6.1f} / "
                     f"{statistics.median(x[key] for x in got[name]) * 1e6:6.1f}" for name in sides]
            print(f"  {label:<34} " + "   ".join(cells))
        print(f"box: {busy_box()}")
        return 0
    finally:
        shutil.rmtree(old, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
