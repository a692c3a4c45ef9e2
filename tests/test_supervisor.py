"""The supervisor and its plumbing (connector/runtime/), without a broker or an emulator: the CPU count,
the crash marker and the suspects board, the processing stage's screening, the supervisor's restarts and
stops with fake pipeline bodies in real forked children, the status link and the merged metrics, and
the per-pipeline settings.

Bodies run in forked children: they report through files in ``tmp_path`` and their exit status, and
always end with ``os._exit`` (``Supervisor._spawn`` does it after the body returns)."""

from __future__ import annotations

import faulthandler
import gc
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import write_config
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from support import FakeMessage

from connector.config import Settings, load_settings
from connector.errors import ExitCode
from connector.processing.record import Encoded, ProcessorSpec, RecordProcessor, Rejected
from connector.processing.stage import Entry, Processing
from connector.runtime import app, cpus, crash_marker, supervisor
from connector.runtime.crash_marker import CrashMarker, Key, SuspectBoard
from connector.runtime.link import ChildLink, MergedMetrics, Status, listener, serve_status
from connector.runtime.supervisor import Supervisor

# == helpers ===================================================================================


def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return check()


def incarnation(tmp: Path, name: str) -> int:
    """In a child: count this start (0 for the first) with a file of its own."""
    n = 0
    while True:
        try:
            fd = os.open(tmp / f"{name}-{n}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            n += 1
            continue
        os.close(fd)
        return n


def on_sigterm_touch(path: Path) -> None:
    """In a child: on SIGTERM, leave ``path`` behind and exit 0."""

    def handler(_signum: int, _frame: object) -> None:
        path.touch()
        os._exit(0)

    signal.signal(signal.SIGTERM, handler)


def suspects_json(board: SuspectBoard) -> str:
    _, suspects = board.read()
    return json.dumps(sorted([*k, n, how] for k, (n, how) in suspects.items()))


def Msg(value: bytes | None, offset: int, topic: str = "t", partition: int = 0) -> FakeMessage:
    """What the processing stage reads of a consumed record."""
    return FakeMessage(topic, partition, offset, None, value)


def entries_of(values: list[bytes | None], topic: str = "t", partition: int = 0) -> list[Entry]:
    return [(Msg(v, i, topic, partition), (topic, partition), 0) for i, v in enumerate(values)]


def _settings(tmp: Path) -> Settings:
    path = write_config(tmp / "c.toml", bootstrap="127.0.0.1:9", emulator_url="http://127.0.0.1:9", prefix="s.",
                        group="g", metrics_port=9)
    return load_settings(path, aep={"dcs_url": "http://127.0.0.1:9", "inlet_id": "i", "org_id": "o@AdobeOrg",
                                    "authentication_required": False})


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return _settings(tmp_path_factory.mktemp("supervisor"))


@pytest.fixture(scope="module")
def spec(settings: Settings) -> ProcessorSpec:
    # No registry: the values below are JSON, which needs none.
    decode = settings.decode.model_copy(update={"schema_registry_url": ""})
    return ProcessorSpec(decode, settings.xdm, settings.aep.org_id, settings.aep.source_name, 940_000)


def _values(n: int) -> list[bytes | None]:
    from connector.decode.avro_schemas import LocalSchemas
    from connector.dev.produce import SampleEncoder
    from connector.dev.samples import generate_events

    enc = SampleEncoder(LocalSchemas.load())
    return [enc.encode(ev, "json") for ev in generate_events(n, seed=11, now_ms=int(time.time() * 1000))]


@pytest.fixture(scope="module")
def values() -> list[bytes | None]:
    return _values(6)


# == 1. how many processes =====================================================================


@pytest.fixture()
def affinity(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    def set_cpus(n: int) -> None:
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(n)))

    return set_cpus


def _cgroup(tmp: Path, *, v2: str | None = None, v1: tuple[int, int] | None = None) -> str:
    root = tmp / "cgroup"
    root.mkdir()
    if v2 is not None:
        (root / "cpu.max").write_text(v2 + "\n")
    if v1 is not None:
        (root / "cpu").mkdir()
        (root / "cpu" / "cpu.cfs_quota_us").write_text(f"{v1[0]}\n")
        (root / "cpu" / "cpu.cfs_period_us").write_text(f"{v1[1]}\n")
    return str(root)


def test_an_explicit_number_of_processes_is_taken_as_is(affinity: Callable[[int], None], tmp_path: Path) -> None:
    affinity(2)
    root = _cgroup(tmp_path, v2="100000 100000")
    assert cpus.resolve_processes(3, root) == 3  # more than the CPUs: the operator's choice
    assert cpus.resolve_processes(12, root) == 12  # beyond MAX_AUTO_PROCESSES too
    assert cpus.resolve_processes(1, root) == 1


@pytest.mark.parametrize(("cpu_max", "cpus_allowed", "expected"), [
    ("150000 100000", 4, 2),  # 1.5 CPUs: rounded up
    ("150000 100000", 1, 1),  # ... but no more than the affinity mask allows
    ("100000 100000", 4, 1),
    ("50000 100000", 4, 1),  # half a CPU: still one process
    ("max 100000", 3, 3),  # no quota: the affinity mask
    ("max 100000", 16, cpus.MAX_AUTO_PROCESSES),  # ... at most 8
    ("1600000 100000", 32, cpus.MAX_AUTO_PROCESSES),
])
def test_auto_follows_the_cgroup_v2_quota(affinity: Callable[[int], None], tmp_path: Path, cpu_max: str,
                                          cpus_allowed: int, expected: int) -> None:
    affinity(cpus_allowed)
    assert cpus.resolve_processes("auto", _cgroup(tmp_path, v2=cpu_max)) == expected


@pytest.mark.parametrize(("quota", "cpus_allowed", "expected"), [
    ((250_000, 100_000), 8, 3),
    ((200_000, 100_000), 8, 2),
    ((100_000, 100_000), 8, 1),
    ((-1, 100_000), 6, 6),  # unlimited
    ((-1, 100_000), 12, cpus.MAX_AUTO_PROCESSES),
])
def test_auto_follows_the_cgroup_v1_quota(affinity: Callable[[int], None], tmp_path: Path, quota: tuple[int, int],
                                          cpus_allowed: int, expected: int) -> None:
    affinity(cpus_allowed)
    assert cpus.resolve_processes("auto", _cgroup(tmp_path, v1=quota)) == expected


def test_auto_without_a_cgroup_is_the_affinity_mask(affinity: Callable[[int], None], tmp_path: Path) -> None:
    affinity(5)
    assert cpus.resolve_processes("auto", str(tmp_path / "nothing-here")) == 5
    assert cpus.resolve_processes("auto", _cgroup(tmp_path, v2="garbage")) == 5


# == 2. the crash marker and the suspects board ================================================

KEYS: list[Key] = [("orders", 0, 41), ("orders", 0, 42), ("orders", 3, 7)]


def test_the_marker_names_the_record_being_processed() -> None:
    marker = CrashMarker()
    assert marker.culprit() is None  # never used
    assert marker.begin(KEYS)
    assert marker.culprit() is None  # a batch named, no record begun
    for i, key in enumerate(KEYS):
        marker.slot[0] = i
        assert marker.culprit() == key
    marker.end()
    assert marker.culprit() is None  # between batches
    assert marker.begin(KEYS[:1])  # a shorter batch over a longer one
    marker.slot[0] = 0
    assert marker.culprit() == KEYS[0]
    marker.slot[0] = 2  # an index beyond the batch names nothing
    assert marker.culprit() is None
    marker.slot[0] = 0
    marker.reset()
    assert marker.culprit() is None


def test_keys_that_do_not_fit_are_refused() -> None:
    marker = CrashMarker()
    assert marker.begin(KEYS)
    marker.slot[0] = 1
    assert not marker.begin([("x" * crash_marker._SIZE, 0, 0)])
    assert marker.culprit() == KEYS[1]  # the marker is as it was
    many = [("a-topic-of-some-length", p, o) for p in range(64) for o in range(1_000)]  # ~2 MB of keys
    assert not marker.begin(many)
    assert marker.begin(many[:10_000])


def _fork(child: Callable[[], None]) -> int:
    """Run ``child`` in a forked process; its exit status (negative: the signal that ended it)."""
    pid = os.fork()
    if pid == 0:
        try:
            child()
        finally:
            os._exit(70)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_the_marker_survives_the_death_of_its_writer() -> None:
    marker = CrashMarker()

    def dies_on_the_third() -> None:
        marker.begin(KEYS)
        marker.slot[0] = 2
        os.kill(os.getpid(), signal.SIGKILL)

    assert _fork(dies_on_the_third) == -signal.SIGKILL
    assert marker.culprit() == KEYS[2]

    def finishes() -> None:
        marker.begin(KEYS[:2])
        marker.slot[0] = 1
        marker.end()
        os._exit(3)

    assert _fork(finishes) == 3
    assert marker.culprit() is None


def test_the_board_publishes_strikes_to_a_forked_reader(tmp_path: Path) -> None:
    board = SuspectBoard()
    assert board.read() == (0, {})
    seen = board.version
    assert board.strike(KEYS[0], "signal SIGSEGV") == 1
    assert board.strike(KEYS[0], "signal SIGKILL") == 2
    assert board.strike(KEYS[2], "exit code 70") == 1
    assert board.version != seen and board.version % 2 == 0
    expected = {KEYS[0]: (2, "signal SIGKILL"), KEYS[2]: (1, "exit code 70")}
    assert board.read() == (board.version, expected)
    out = tmp_path / "read"

    def reads() -> None:  # what a child forked before the strikes sees is the shared page, not a copy
        out.write_text(suspects_json(board))
        os._exit(0)

    assert _fork(reads) == 0
    assert json.loads(out.read_text()) == [["orders", 0, 41, 2, "signal SIGKILL"], ["orders", 3, 7, 1, "exit code 70"]]


def test_a_board_too_full_publishes_the_worst_killers_that_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not even 10,000 keys fit when topic names are long: the supervisor must not fail on the
    next strike (it raised IndexError from the shared page), it publishes the worst that fit."""
    monkeypatch.setattr(crash_marker, "_SIZE", 4096)  # the page below is this big; ~130 bytes a key
    board = SuspectBoard()
    topic = "t" * 100
    for offset in range(200):
        board.strike((topic, 0, offset), "signal SIGSEGV")
    assert board.strike((topic, 0, 7), "signal SIGBUS") == 2
    version, published = board.read()
    assert version == board.version
    assert 10 < len(published) < 40  # as many as fit in 4 KB
    assert published[(topic, 0, 7)] == (2, "signal SIGBUS")  # the worst first
    assert len(board.suspects) == 200  # the supervisor still counts every one


def test_a_strike_after_the_fork_reaches_the_running_child(tmp_path: Path) -> None:
    board = SuspectBoard()
    r, w = os.pipe()
    out = tmp_path / "read"
    pid = os.fork()
    if pid == 0:
        try:
            os.close(w)
            os.read(r, 1)  # the parent struck meanwhile
            out.write_text(suspects_json(board))
        finally:
            os._exit(0)
    os.close(r)
    board.strike(KEYS[1], "signal SIGABRT")
    os.write(w, b"x")
    os.close(w)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert json.loads(out.read_text()) == [["orders", 0, 42, 1, "signal SIGABRT"]]


# == 3. the processing stage's screening =======================================================


class Collect:
    def __init__(self) -> None:
        self.calls: list[tuple[list[Entry], list[Any]]] = []

    def __call__(self, entries: list[Entry], outcomes: list[Any]) -> None:
        assert len(entries) == len(outcomes)
        self.calls.append((entries, outcomes))

    @property
    def outcomes(self) -> list[Any]:
        return [o for _, os_ in self.calls for o in os_]

    @property
    def entries(self) -> list[Entry]:
        return [e for es, _ in self.calls for e in es]


def _watch(stage: Processing, marker: CrashMarker | None = None) -> list[tuple[bytes | None, Key | None]]:
    """Record each value the stage processes, with the record the marker names meanwhile."""
    seen: list[tuple[bytes | None, Key | None]] = []
    real = stage.processor.decoder.decode

    def decode(value: bytes | None) -> Any:
        seen.append((value, marker.culprit() if marker is not None else None))
        return real(value)

    stage.processor.decoder.decode = decode  # type: ignore[method-assign]
    return seen


def _board(*strikes: tuple[Key, int]) -> SuspectBoard:
    board = SuspectBoard()
    for key, n in strikes:
        for _ in range(n):
            board.strike(key, "signal SIGSEGV")
    return board


@pytest.mark.parametrize("with_marker", [False, True])
def test_a_record_that_killed_two_processes_is_dead_lettered_in_its_place(
        spec: ProcessorSpec, values: list[bytes | None], with_marker: bool) -> None:
    expected = RecordProcessor(spec).run(values)
    assert all(type(o) is Encoded for o in expected)
    marker = CrashMarker() if with_marker else None
    got = Collect()
    stage = Processing(RecordProcessor(spec), got, marker, _board((("t", 0, 2), 2), (("other", 0, 4), 2)))
    seen = _watch(stage, marker)
    entries = entries_of(values)
    stage.submit(entries)
    assert got.entries == entries
    out = got.outcomes
    assert type(out[2]) is Rejected
    assert (out[2].stage, out[2].error_class, out[2].reason) == ("process", "ProcessCrashed", "crashed_processing")
    assert "signal SIGSEGV" in out[2].detail
    assert out[:2] + out[3:] == expected[:2] + expected[3:]  # the others processed, in their places
    assert [v for v, _ in seen] == values[:2] + values[3:]  # the killer is not even decoded
    if marker is not None:
        # each record named in the marker while it is processed, the killer's neighbours included
        assert [k for _, k in seen] == [("t", 0, i) for i in (0, 1, 3, 4, 5)]
        assert marker.slot[0] == -1 and marker.culprit() is None


def test_a_record_with_one_strike_is_processed_again(spec: ProcessorSpec, values: list[bytes | None]) -> None:
    expected = RecordProcessor(spec).run(values)
    marker = CrashMarker()
    got = Collect()
    stage = Processing(RecordProcessor(spec), got, marker, _board((("t", 0, 2), 1)))
    seen = _watch(stage, marker)
    stage.submit(entries_of(values))
    assert got.outcomes == expected
    assert [k for _, k in seen] == [("t", 0, i) for i in range(len(values))]
    assert marker.slot[0] == -1


def test_the_stage_reads_strikes_published_after_it_started(spec: ProcessorSpec, values: list[bytes | None]) -> None:
    board = SuspectBoard()
    got = Collect()
    stage = Processing(RecordProcessor(spec), got, CrashMarker(), board)
    stage.submit(entries_of(values[:3]))
    assert [type(o) for o in got.outcomes] == [Encoded] * 3
    board.strike(("t", 1, 1), "signal SIGBUS")
    board.strike(("t", 1, 1), "signal SIGBUS")
    stage.submit(entries_of(values[:3], partition=1))
    assert [type(o) for o in got.outcomes[3:]] == [Encoded, Rejected, Encoded]
    assert "SIGBUS" in got.outcomes[4].detail


def test_with_a_marker_every_record_is_named_and_the_slot_cleared(spec: ProcessorSpec,
                                                                 values: list[bytes | None]) -> None:
    marker = CrashMarker()
    got = Collect()
    stage = Processing(RecordProcessor(spec), got, marker)
    seen = _watch(stage, marker)
    stage.submit(entries_of(values, topic="u", partition=5))
    assert [k for _, k in seen] == [("u", 5, i) for i in range(len(values))]
    assert marker.slot[0] == -1 and marker.culprit() is None
    assert got.outcomes == RecordProcessor(spec).run(values)


def test_a_batch_whose_keys_do_not_fit_is_marked_in_parts(spec: ProcessorSpec, values: list[bytes | None],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crash_marker, "_SIZE", 16 + 2 * len(b'["u",5,0],') + 2)  # two keys fit, not three
    marker = CrashMarker()
    got = Collect()
    stage = Processing(RecordProcessor(spec), got, marker)
    seen = _watch(stage, marker)
    stage.submit(entries_of(values, topic="u", partition=5))
    assert [k for _, k in seen] == [("u", 5, i) for i in range(len(values))]
    assert got.outcomes == RecordProcessor(spec).run(values)
    assert marker.slot[0] == -1


# == 4. the supervisor =========================================================================


class Supervised:
    """Make supervisors, run them under a watchdog, and leave no child behind."""

    def __init__(self) -> None:
        self.made: list[Supervisor] = []
        self.codes: list[tuple[int, int]] = []  # (index, exit code) of each child reaped, in order

    def __call__(self, processes: int, body: supervisor.Body, stop_timeout_s: float = 5.0) -> Supervisor:
        sup = Supervisor(processes, body, stop_timeout_s)
        died = sup._died

        def record(child: Any, code: int) -> None:
            self.codes.append((child.index, code))
            died(child, code)

        sup._died = record  # type: ignore[method-assign]
        self.made.append(sup)
        return sup

    def run(self, sup: Supervisor, within: float = 10.0, meanwhile: Callable[[], None] | None = None) -> int:
        """Start ``sup`` and run it on this thread (``meanwhile`` on another); fail if it takes
        longer than ``within``."""
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            self.kill(sup)
            sup.stop()

        watchdog = threading.Timer(within, expire)
        watchdog.start()
        helper = threading.Thread(target=meanwhile, daemon=True) if meanwhile else None
        try:
            sup.start()
            if helper is not None:
                helper.start()
            code = sup.run()
        finally:
            watchdog.cancel()
        if helper is not None:
            helper.join(5)
        assert not expired.is_set(), f"the supervisor did not stop within {within} s"
        assert not any(c.pid for c in sup.children)
        return code

    @staticmethod
    def kill(sup: Supervisor) -> None:
        for child in sup.children:
            if child.pid:
                try:
                    os.kill(child.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def close(self) -> None:
        for sup in self.made:
            for child in sup.children:
                if child.pid:
                    try:
                        os.kill(child.pid, signal.SIGKILL)
                        os.waitpid(child.pid, 0)
                    except (ProcessLookupError, ChildProcessError):
                        pass
                    child.pid = 0
            for sock in sup._listeners:
                sock.close()


@pytest.fixture()
def supervised() -> Iterator[Supervised]:
    s = Supervised()
    try:
        yield s
    finally:
        s.close()
        gc.unfreeze()  # Supervisor.start froze pytest's objects


@pytest.fixture()
def slow_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """A restart after a backoff would not come within a test's time."""
    monkeypatch.setattr(supervisor, "BACKOFF_S", (60.0,))


def test_a_child_killed_on_a_record_is_restarted_at_once_and_the_record_struck(
        supervised: Supervised, tmp_path: Path, slow_backoff: None) -> None:
    batch: list[Key] = [("t", 0, 5), ("t", 0, 6), ("t", 0, 7)]

    def body(index: int, marker: CrashMarker, board: SuspectBoard, sock: socket.socket) -> int:
        n = incarnation(tmp_path, "start")
        (tmp_path / f"suspects-{n}").write_text(suspects_json(board))
        if n < 2:
            marker.begin(batch)
            marker.slot[0] = 1
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(30)  # until the supervisor stops it
        return 0

    sup = supervised(1, body)

    def stop_once_the_third_is_up() -> None:
        wait_for((tmp_path / "suspects-2").exists)
        sup.stop()

    assert supervised.run(sup, meanwhile=stop_once_the_third_is_up) == ExitCode.OK
    assert json.loads((tmp_path / "suspects-0").read_text()) == []
    assert json.loads((tmp_path / "suspects-1").read_text()) == [["t", 0, 6, 1, "signal SIGKILL"]]
    assert json.loads((tmp_path / "suspects-2").read_text()) == [["t", 0, 6, 2, "signal SIGKILL"]]
    assert not (tmp_path / "start-3").exists()
    assert sup.board.suspects == {("t", 0, 6): (2, "signal SIGKILL")}
    assert supervised.codes == [(0, -signal.SIGKILL), (0, -signal.SIGKILL), (0, -signal.SIGTERM)]
    samples = sup.metrics.registry.get_sample_value
    assert samples("capillary_aep_pipeline_restarts_total", {"cause": "record"}) == 2
    assert samples("capillary_aep_pipeline_restarts_total", {"cause": "unknown"}) == 0  # created at 0, never incremented


def test_a_killer_record_is_dead_lettered_by_the_restarted_pipeline(
        supervised: Supervised, tmp_path: Path, spec: ProcessorSpec, values: list[bytes | None],
        slow_backoff: None) -> None:
    """The marker, the board and the stage together: the record a pipeline dies on twice is
    dead-lettered by the third, its neighbours processed each time."""
    poison = values[3]

    def body(index: int, marker: CrashMarker, board: SuspectBoard, sock: socket.socket) -> int:
        n = incarnation(tmp_path, "start")
        faulthandler.disable()  # pytest's: no traceback dump for the deaths below
        got = Collect()
        stage = Processing(RecordProcessor(spec), got, marker, board)
        real = stage.processor.decoder.decode

        def decode(value: bytes | None) -> Any:
            if value is poison:
                os.kill(os.getpid(), signal.SIGSEGV if n == 0 else signal.SIGABRT)
            return real(value)

        stage.processor.decoder.decode = decode  # type: ignore[method-assign]
        stage.submit(entries_of(values))
        (tmp_path / "outcomes").write_text(json.dumps([[type(o).__name__, getattr(o, "reason", None)]
                                                       for o in got.outcomes]))
        time.sleep(30)
        return 0

    sup = supervised(1, body)

    def stop_once_done() -> None:
        wait_for((tmp_path / "outcomes").exists)
        sup.stop()

    assert supervised.run(sup, meanwhile=stop_once_done) == ExitCode.OK
    outcomes = json.loads((tmp_path / "outcomes").read_text())
    assert outcomes == [["Encoded", None]] * 3 + [["Rejected", "crashed_processing"]] + [["Encoded", None]] * 2
    assert sup.board.suspects == {("t", 0, 3): (2, "signal SIGABRT")}
    assert [code for _, code in supervised.codes] == [-signal.SIGSEGV, -signal.SIGABRT, -signal.SIGTERM]


def test_a_deliberate_exit_stops_the_others_with_its_code(supervised: Supervised, tmp_path: Path) -> None:
    def body(index: int, marker: CrashMarker, board: SuspectBoard, sock: socket.socket) -> int:
        if index == 0:
            wait_for((tmp_path / "ready-1").exists)
            return ExitCode.DLQ
        on_sigterm_touch(tmp_path / f"term-{index}")
        (tmp_path / f"ready-{index}").touch()
        time.sleep(30)
        return 0

    sup = supervised(2, body, stop_timeout_s=30.0)  # a kill would come after the watchdog's 10 s
    started = time.monotonic()
    assert supervised.run(sup) == ExitCode.DLQ
    assert time.monotonic() - started < 5
    assert (tmp_path / "term-1").exists()
    assert sorted(supervised.codes) == [(0, ExitCode.DLQ), (1, 0)]
    assert "DLQ" in sup.stop_reason


def test_deaths_with_no_record_to_blame_stop_the_replica(supervised: Supervised, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "BACKOFF_S", (0.01, 0.02))

    def body(index: int, marker: CrashMarker, board: SuspectBoard, sock: socket.socket) -> int:
        incarnation(tmp_path, "start")
        marker.begin(KEYS)  # a batch named, but no record begun: nothing to blame
        os.kill(os.getpid(), signal.SIGKILL)
        return 0

    sup = supervised(1, body)
    assert supervised.run(sup) == ExitCode.WORKERS
    assert sorted(p.name for p in tmp_path.glob("start-*")) == [f"start-{i}" for i in range(supervisor.MAX_DEATHS)]
    assert sup.board.suspects == {}
    assert sup.metrics.registry.get_sample_value("capillary_aep_pipeline_restarts_total",
                                                 {"cause": "unknown"}) == supervisor.MAX_DEATHS


def test_an_unexpected_exit_is_restarted_after_a_backoff(supervised: Supervised, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "BACKOFF_S", (0.5, 60.0))

    def body(index: int, marker: CrashMarker, board: SuspectBoard, sock: socket.socket) -> int:
        n = incarnation(tmp_path, "start")
        (tmp_path / f"at-{n}").write_text(repr(time.monotonic()))
        if n == 0:
            return 1  # no documented code: a death
        time.sleep(30)
        return 0

    sup = supervised(1, body)

    def stop_once_restarted() -> None:
        wait_for((tmp_path / "at-1").exists)
        sup.stop()

    assert supervised.run(sup, meanwhile=stop_once_restarted) == ExitCode.OK
    first, second = (float((tmp_path / f"at-{i}").read_text()) for i in range(2))
    assert second - first >= 0.45  # the backoff was waited
    assert supervised.codes == [(0, 1), (0, -signal.SIGTERM)]


def test_stop_passes_sigterm_to_every_child(supervised: Supervised, tmp_path: Path) -> None:
    def body(index: int, marker: CrashMarker, board: SuspectBoard, sock: socket.socket) -> int:
        on_sigterm_touch(tmp_path / f"term-{index}")
        (tmp_path / f"ready-{index}").touch()
        time.sleep(30)
        return 0

    sup = supervised(3, body, stop_timeout_s=30.0)

    def stop_when_ready() -> None:
        wait_for(lambda: all((tmp_path / f"ready-{i}").exists() for i in range(3)))
        sup.stop()  # what the supervisor's SIGTERM handler does

    assert supervised.run(sup, meanwhile=stop_when_ready) == ExitCode.OK
    assert sorted(p.name for p in tmp_path.glob("term-*")) == ["term-0", "term-1", "term-2"]
    assert sorted(supervised.codes) == [(0, 0), (1, 0), (2, 0)]


def test_the_supervisors_sigterm_handler_stops_it(supervised: Supervised, tmp_path: Path) -> None:
    def body(index: int, marker: CrashMarker, board: SuspectBoard, sock: socket.socket) -> int:
        (tmp_path / f"ready-{index}").touch()
        time.sleep(30)
        return 0

    sup = supervised(1, body)
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    sup.install_signal_handlers()
    try:
        def term_when_ready() -> None:
            wait_for((tmp_path / "ready-0").exists)
            os.kill(os.getpid(), signal.SIGTERM)  # to the supervisor (this process)

        assert supervised.run(sup, meanwhile=term_when_ready) == ExitCode.OK
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
    assert supervised.codes == [(0, -signal.SIGTERM)]


def test_a_child_that_ignores_sigterm_is_killed_after_its_bound(supervised: Supervised, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "STOP_MARGIN_S", 0.4)

    def body(index: int, marker: CrashMarker, board: SuspectBoard, sock: socket.socket) -> int:
        if index == 1:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        (tmp_path / f"ready-{index}").touch()
        time.sleep(30)
        return 0

    sup = supervised(2, body, stop_timeout_s=0.4)
    stopped = [0.0]

    def stop_when_ready() -> None:
        wait_for(lambda: all((tmp_path / f"ready-{i}").exists() for i in range(2)))
        stopped[0] = time.monotonic()
        sup.stop()

    assert supervised.run(sup, meanwhile=stop_when_ready) == ExitCode.OK
    took = time.monotonic() - stopped[0]
    assert 0.75 <= took < 4, took  # stop_timeout_s + STOP_MARGIN_S, not before
    assert sorted(supervised.codes) == [(0, -signal.SIGTERM), (1, -signal.SIGKILL)]


def test_each_child_gets_its_index_and_its_own_status_socket(supervised: Supervised, tmp_path: Path) -> None:
    def body(index: int, marker: CrashMarker, board: SuspectBoard, sock: socket.socket) -> int:
        serve_status(sock, lambda: {"families": [], "live": {"ok": True}, "ready": {}, "detail": f"I am {index}"})
        (tmp_path / f"ready-{index}").touch()
        time.sleep(30)
        return 0

    sup = supervised(2, body)
    answers: dict[int, Status | None] = {}

    def ask() -> None:
        wait_for(lambda: all((tmp_path / f"ready-{i}").exists() for i in range(2)))
        for link in sup.links:
            answers[link.index] = link.status()
        sup.stop()

    assert supervised.run(sup, meanwhile=ask) == ExitCode.OK
    assert {i: s["detail"] if s else None for i, s in answers.items()} == {0: "I am 0", 1: "I am 1"}


# == 5. the status link and the merged metrics =================================================


@pytest.fixture()
def listeners() -> Iterator[Callable[[int], socket.socket]]:
    made: list[socket.socket] = []

    def make(index: int) -> socket.socket:
        made.append(listener(index))
        return made[-1]

    yield make
    for sock in made:
        try:
            sock.shutdown(socket.SHUT_RDWR)  # wakes the serving thread's accept()
        except OSError:
            pass
        sock.close()


def _families(value: float, name: str = "capillary_aep_records") -> list[Any]:
    r = CollectorRegistry()
    Counter(name, "Records consumed", ["topic"], registry=r).labels("orders").inc(value)
    Gauge("capillary_aep_buffered_records", "Records buffered", registry=r).set(value * 10)
    return list(r.collect())


def test_a_child_answers_the_supervisor_with_its_status(listeners: Callable[[int], socket.socket]) -> None:
    doc: Status = {"families": _families(3), "live": {"loop_running": True}, "ready": {"running": False},
                   "detail": "dead-letter topic unusable"}
    serve_status(listeners(901), lambda: doc)
    got = ChildLink(901, os.getpid()).status()
    assert got is not None
    assert (got["live"], got["ready"], got["detail"]) == (doc["live"], doc["ready"], doc["detail"])
    assert [f.name for f in got["families"]] == ["capillary_aep_records", "capillary_aep_buffered_records"]
    assert ChildLink(901, os.getpid()).status() is not None  # one answer per connection, as often as asked


def test_no_status_when_nobody_listens_or_the_child_cannot_answer(
        listeners: Callable[[int], socket.socket]) -> None:
    assert ChildLink(902, os.getpid()).status(timeout=0.5) is None
    assert ChildLink(903, os.getpid() + 1_000_000).status(timeout=0.5) is None  # another supervisor's

    def broken() -> Status:
        raise RuntimeError("no status")

    serve_status(listeners(904), broken)
    started = time.monotonic()
    assert ChildLink(904, os.getpid()).status(timeout=2) is None
    assert time.monotonic() - started < 1.5  # the connection closed, not the timeout waited

    silent = listeners(905)  # listening, never accepting: the timeout
    started = time.monotonic()
    assert ChildLink(905, os.getpid()).status(timeout=0.3) is None
    assert time.monotonic() - started < 2
    assert silent.fileno() >= 0


def test_merged_metrics_give_one_family_per_name_labelled_by_pipeline() -> None:
    own = CollectorRegistry()
    Gauge("capillary_aep_pipeline_processes", "Pipeline processes", registry=own).set(2)
    Counter("capillary_aep_records", "Records consumed", ["topic"], registry=own)  # a family no child has yet
    statuses: list[tuple[str, Status]] = [
        ("0", {"families": _families(3), "live": {}, "ready": {}, "detail": ""}),
        ("1", {"families": _families(5), "live": {}, "ready": {}, "detail": ""}),
    ]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MergedMetrics(own, lambda: statuses))
    text = generate_latest(registry).decode()
    for name in ("capillary_aep_records_total", "capillary_aep_records_created", "capillary_aep_buffered_records",
                 "capillary_aep_pipeline_processes"):
        assert text.count(f"# HELP {name} ") == 1, text
        assert text.count(f"# TYPE {name} ") == 1, text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    records = {(s.name, s.labels["pipeline"], s.labels["topic"]): s.value
               for s in families["capillary_aep_records"].samples if s.name.endswith("_total")}
    assert records == {("capillary_aep_records_total", "0", "orders"): 3.0,
                       ("capillary_aep_records_total", "1", "orders"): 5.0}
    buffered = {s.labels["pipeline"]: s.value for s in families["capillary_aep_buffered_records"].samples}
    assert buffered == {"0": 30.0, "1": 50.0}
    processes = [(s.labels, s.value) for s in families["capillary_aep_pipeline_processes"].samples]
    assert processes == [({"pipeline": "supervisor"}, 2.0)]
    statuses.pop()  # a child that does not answer: its series are gone, the rest stay
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    assert {s.labels["pipeline"] for s in families["capillary_aep_buffered_records"].samples} == {"0"}


def test_merged_metrics_over_real_links(listeners: Callable[[int], socket.socket]) -> None:
    for index, value in ((906, 1), (907, 2)):
        doc: Status = {"families": _families(value), "live": {}, "ready": {}, "detail": ""}
        serve_status(listeners(index), lambda doc=doc: doc)  # type: ignore[misc]
    links = [ChildLink(i, os.getpid()) for i in (906, 907)]

    def children() -> list[tuple[str, Status]]:
        return [(str(link.index), s) for link in links if (s := link.status()) is not None]

    registry = CollectorRegistry(auto_describe=False)
    registry.register(MergedMetrics(CollectorRegistry(), children))
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    assert {s.labels["pipeline"]: s.value for s in families["capillary_aep_buffered_records"].samples} == {
        "906": 10.0, "907": 20.0}


# == 6. a pipeline's settings ==================================================================


def test_for_pipeline_names_the_static_member_and_shares_the_buffers(settings: Settings) -> None:
    s = settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"group_instance_id": "pod-a"})})
    d = s.delivery
    mine = app.for_pipeline(s, 1, 3)
    assert mine.kafka.group_instance_id == "pod-a-1"
    assert app.for_pipeline(s, 0, 3).kafka.group_instance_id == "pod-a-0"
    assert mine.delivery.max_buffered_records == d.max_buffered_records // 3
    assert mine.delivery.max_buffered_bytes == d.max_buffered_bytes // 3
    assert mine.kafka.bootstrap_servers == s.kafka.bootstrap_servers
    assert s.kafka.group_instance_id == "pod-a" and s.delivery.max_buffered_records == d.max_buffered_records
    one = app.for_pipeline(s, 0, 1)
    assert one.delivery.max_buffered_records == d.max_buffered_records
    assert one.delivery.max_buffered_bytes == d.max_buffered_bytes


def test_for_pipeline_leaves_a_dynamic_member_dynamic(settings: Settings) -> None:
    assert settings.kafka.group_instance_id is None
    mine = app.for_pipeline(settings, 2, 4)
    assert mine.kafka.group_instance_id is None
    assert mine.delivery.max_buffered_records == settings.delivery.max_buffered_records // 4
