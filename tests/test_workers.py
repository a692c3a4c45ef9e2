"""Worker processes for decode → transform → encode: same outcomes as in-process, in order, and a
worker that dies loses no chunk (restarted, its outstanding chunks re-sent) or stops the connector
when it keeps dying."""

from __future__ import annotations

import os
import pickle
import signal
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from harness import write_config
from support import wait_until

from connector.avro_schemas import LocalSchemas
from connector.config import load_settings
from connector.dev.produce import SampleEncoder
from connector.dev.samples import generate_events
from connector.errors import RegistryUnavailable, Stage, WorkerCrashed
from connector.metrics import METRICS
from connector.process import Empty, Encoded, ProcessorSpec, RecordProcessor, Rejected
from connector.workers import MAX_AUTO_WORKERS, WorkerPool, pack, resolve_workers, unpack


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> ProcessorSpec:
    path = write_config(tmp_path_factory.mktemp("workers") / "c.toml", bootstrap="127.0.0.1:9",
                        emulator_url="http://127.0.0.1:9", prefix="w.", group="g", metrics_port=9)
    s = load_settings(path, aep={"dcs_url": "http://127.0.0.1:9", "inlet_id": "i", "org_id": "o@AdobeOrg",
                                 "authentication_required": False})
    # No registry: the values below are JSON and single-object Avro, which need none.
    decode = s.decode.model_copy(update={"schema_registry_url": ""})
    return ProcessorSpec(decode, s.xdm, s.aep.org_id, s.aep.source_name, 940_000)


def _values(n: int, seed: int = 3, poison: bool = True) -> list[bytes | None]:
    enc = SampleEncoder(LocalSchemas.load())
    out: list[bytes | None] = []
    for i, ev in enumerate(generate_events(n, seed=seed, now_ms=int(time.time() * 1000))):
        out.append(enc.encode(ev, "json" if i % 2 else "avro-single"))
    if not poison:
        return out
    # Poison among them: each must come back as a dead letter with its reason, in its place.
    out[3] = b"{not json"
    out[7] = b'{"eventName": "noSuchEvent", "createdAt": 1700000000000, "data": {}}'
    out[11] = b"\x00\x00\x00\x00\x07abc"  # registry framing with no registry configured
    out[13] = None
    return out


def _collect_all(pool: WorkerPool, want: int, deadline_s: float = 60) -> dict[int, list[Any]]:
    got: dict[int, list[Any]] = {}
    deadline = time.monotonic() + deadline_s
    while len(got) < want and time.monotonic() < deadline:
        pool.collect(0.2, lambda seq, outcomes: got.__setitem__(seq, outcomes) if seq not in got else
                     pytest.fail(f"chunk {seq} answered twice"))
    assert len(got) == want, f"{want - len(got)} chunks never answered"
    return got


def test_outcomes_cross_the_pipe_as_the_same_typed_records() -> None:
    outcomes = [Encoded("json", [b"{}"], [("event", "t")], 3, ("too_long",)), Empty("avro-registry"),
                Rejected(Stage.DECODE, "DecodeError", "invalid_json", "detail", None, None)]
    back = unpack(pickle.loads(pickle.dumps(pack(outcomes))))
    assert back == outcomes
    assert [type(o) for o in back] == [Encoded, Empty, Rejected]
    assert back[0].bodies == [b"{}"] and back[2].reason == "invalid_json"


def test_outcomes_in_a_worker_equal_the_in_process_ones(spec: ProcessorSpec) -> None:
    values = _values(60)
    local = RecordProcessor(spec).run(values)
    kinds = [type(o) for o in local]
    assert kinds.count(Rejected) == 4 and Encoded in kinds
    assert [o.reason for o in local if type(o) is Rejected] == ["invalid_json", "unknown_event", "no_registry",
                                                                 "empty_value"]
    assert Empty not in kinds or all(len(o) == 1 for o in local if type(o) is Empty)
    busy_before = [METRICS.worker_busy.labels(str(n))._value.get() for n in (0, 1)]
    pool = WorkerPool(2, spec)
    try:
        seqs = [pool.submit(0, values[:30]), pool.submit(1, values[30:])]
        got = _collect_all(pool, 2)
        # Each worker is named in top and ps (the chunks above prove it has started and named itself).
        assert [Path(f"/proc/{pid}/comm").read_text().strip() for pid in pool.pids] == ["transform-0", "transform-1"]
    finally:
        pool.close()
    assert got[seqs[0]] + got[seqs[1]] == local
    assert [type(o) for o in got[seqs[0]] + got[seqs[1]]] == kinds  # equal tuples are not enough
    # Each worker reported the time it spent on its chunk (capillary_aep_worker_busy_seconds_total).
    assert all(METRICS.worker_busy.labels(str(n))._value.get() > busy_before[n] for n in (0, 1))


def test_a_killed_worker_is_restarted_and_its_chunks_are_answered_once(spec: ProcessorSpec) -> None:
    values = _values(40, seed=5)
    want = RecordProcessor(spec).run(values)
    pool = WorkerPool(1, spec)
    try:
        seqs = [pool.submit(0, values) for _ in range(6)]
        victim = pool.pids[0]
        restarts = METRICS.worker_restarts._value.get()
        os.kill(victim, signal.SIGKILL)
        got = _collect_all(pool, len(seqs))
        assert pool.pids[0] != victim
        assert METRICS.worker_restarts._value.get() == restarts + 1
    finally:
        pool.close()
    # The program cache (tier names seen earlier) may differ between the killed worker and its
    # successor, so compare what delivery depends on: outcome, format, message ids and labels.
    assert all(_delivery_view(got[s]) == _delivery_view(want) for s in seqs)


def _delivery_view(outcomes: list[Any]) -> list[Any]:
    return [(type(o), o.format, [orjson.loads(b)["body"]["xdmEntity"]["_id"] for b in o.bodies], o.labels)
            if type(o) is Encoded else o for o in outcomes]


def test_workers_that_die_starting_stop_the_connector(spec: ProcessorSpec, tmp_path: Path) -> None:
    """A worker that cannot start (here: its schema directory is gone) blames no record: after
    three such deaths in a minute the pool raises WorkerCrashed instead of spinning."""
    broken = ProcessorSpec(spec.decode.model_copy(update={"schemas_dir": str(tmp_path / "gone")}), spec.xdm,
                           spec.org_id, spec.source_name, spec.max_record_size)
    pool = WorkerPool(1, broken)
    try:
        pool.submit(0, _values(5, poison=False))
        with pytest.raises(WorkerCrashed, match="before they were ready"):
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                pool.collect(0.2, lambda *_: pytest.fail("a worker that cannot start answered"))
    finally:
        pool.close()


def test_close_ends_every_worker(spec: ProcessorSpec) -> None:
    pool = WorkerPool(2, spec)
    pids = pool.pids
    pool.close()

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{pid}/status").read_text().find("State:\tZ") >= 0

    wait_until(lambda: all(gone(p) for p in pids), 10, what="workers gone")


def test_resolve_workers() -> None:
    assert resolve_workers(0) == 0
    assert resolve_workers(3) == 3
    auto = resolve_workers("auto")
    cpus = len(os.sched_getaffinity(0))
    assert auto == (0 if cpus < 2 else min(cpus, MAX_AUTO_WORKERS))


def test_writer_schemas_are_fetched_by_the_parent_once_and_follow_a_restarted_worker(spec: ProcessorSpec) -> None:
    """Workers do no I/O: the pool asks the registry for each schema id once and ships the text with
    the first chunk that needs it (and to a worker's successor); an unknown id is a dead letter;
    an unreachable registry raises in the parent before anything is sent."""
    schemas = LocalSchemas.load()
    events = list(generate_events(30, seed=9, now_ms=int(time.time() * 1000)))
    ids = {name: i for i, name in enumerate(sorted({ev["eventName"] for ev in events}), start=10)}

    def wire(ev: dict[str, Any], sid: int | None = None) -> bytes:
        name = ev["eventName"]
        return b"\x00" + (sid or ids[name]).to_bytes(4, "big") + schemas.encode(name, ev)

    asked: list[int] = []
    down = [False]

    def lookup(sid: int) -> str | None:
        if down[0]:
            raise RegistryUnavailable("registry down")
        asked.append(sid)
        name = next((n for n, i in ids.items() if i == sid), None)
        return schemas.schema_json(name) if name else None

    registry_spec = ProcessorSpec(spec.decode.model_copy(update={"schema_registry_url": "http://127.0.0.1:9"}),
                                  spec.xdm, spec.org_id, spec.source_name, spec.max_record_size)
    values = [wire(ev) for ev in events] + [wire(events[0], sid=999)]
    pool = WorkerPool(1, registry_spec, registry_lookup=lookup)
    try:
        first = _collect_all(pool, 1) if pool.submit(0, values) else None
        assert first is not None
        outcomes = next(iter(first.values()))
        assert [type(o) for o in outcomes[:-1]] == [Encoded] * len(events)
        assert type(outcomes[-1]) is Rejected and outcomes[-1].reason == "unknown_schema_id"
        assert sorted(asked) == sorted(set(ids.values()) | {999})
        asked.clear()
        os.kill(pool.pids[0], signal.SIGKILL)
        seq = pool.submit(0, values[:-1])
        again = _collect_all(pool, 1)
        assert [type(o) for o in again[seq]] == [Encoded] * len(events)
        assert asked == []  # known ids are not fetched again, also not for the restarted worker
        down[0] = True
        with pytest.raises(RegistryUnavailable):
            pool.submit(0, [wire(events[0], sid=998)])
        assert pool.outstanding == 0
    finally:
        pool.close()


def test_auto_workers_follow_a_container_cpu_quota(tmp_path: Path) -> None:
    cpus = len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # cgroup v2: 1.5 CPUs
    assert resolve_workers("auto", str(tmp_path)) == (0 if cpus < 2 else 2)
    (tmp_path / "cpu.max").write_text("100000 100000\n")  # one CPU: work on the consumer thread
    assert resolve_workers("auto", str(tmp_path)) == 0
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert resolve_workers("auto", str(tmp_path)) == (0 if cpus < 2 else min(cpus, MAX_AUTO_WORKERS))
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")  # cgroup v1: one CPU
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert resolve_workers("auto", str(tmp_path)) == 0


def test_a_message_json_cannot_carry_is_dead_lettered_not_a_crash(spec: ProcessorSpec) -> None:
    from connector.transform.transformer import XdmMessage

    processor = RecordProcessor(spec)
    values = _values(3, poison=False)
    real = processor.transformer.transform
    calls = iter([False, True, False])

    def transform(event: Any) -> list[Any]:
        out = real(event)
        if next(calls):  # what a bytes field passed through with validation off would give
            out = [XdmMessage("event", "x", "x", {"body": {"raw": b"\x00\x01"}})]
        return out

    processor.transformer.transform = transform  # type: ignore[method-assign]
    outcomes = processor.run(values)
    assert [type(o) for o in outcomes] == [Encoded, Rejected, Encoded]
    assert outcomes[1][:3] == ("transform", "TransformError", "invalid_value")
    assert "not JSON-serialisable" in outcomes[1].detail


def test_with_workers_the_consumer_process_keeps_no_transformer(tmp_path: Path) -> None:
    from connector.pipeline import Pipeline

    for workers, has_processor in ((2, False), (0, True)):
        path = write_config(tmp_path / f"c{workers}.toml", bootstrap="127.0.0.1:9", emulator_url="http://127.0.0.1:9",
                            prefix="w.", group="g", metrics_port=9, extra=f"[processing]\nworkers = {workers}\n")
        p = Pipeline(load_settings(path, aep={"authentication_required": False}))
        try:
            assert (type(p.processing).__name__ == "InlineProcessing") is has_processor
            assert p.registry_lookup is not None  # writer schemas are fetched here in both modes
        finally:
            p.delivery.close()
            p.client.close()
