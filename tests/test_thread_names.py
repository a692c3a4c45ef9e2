"""Threads carry their names down to the OS (connector.runtime.thread_names), so top -H, ps -L and the bench
tell the consumer loop, the senders, librdkafka's threads and the transform workers apart."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

from connector.runtime.thread_names import name_os_thread

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread names are read from /proc")


def _comm(native_id: int) -> str:
    return Path(f"/proc/self/task/{native_id}/comm").read_text().strip()


def test_a_thread_gets_its_python_name_cut_to_what_the_kernel_keeps() -> None:
    seen: dict[str, str] = {}

    def run() -> None:
        name_os_thread()
        seen["default"] = _comm(threading.get_native_id())
        name_os_thread("a-name-longer-than-fifteen-bytes")
        seen["long"] = _comm(threading.get_native_id())

    t = threading.Thread(target=run, name="sender_3")
    t.start()
    t.join()
    assert seen == {"default": "sender_3", "long": "a-name-longer-t"}


def test_the_delivery_stage_names_its_sender_threads() -> None:
    from concurrent.futures import wait

    from connector.delivery.batch import Batcher
    from connector.delivery.lanes import Delivery

    delivery = Delivery(Batcher(2, 10, 1000, 0.05), None, None,  # type: ignore[arg-type] # no request is made
                        delivered=lambda _r: None, rejected=lambda _r, _f: None, sender_failing=lambda _m: None)
    try:
        names = wait([delivery.executor.submit(lambda: _comm(threading.get_native_id())) for _ in range(4)]).done
        assert {f.result() for f in names} <= {"sender_0", "sender_1"}
        assert names
    finally:
        delivery.executor.shutdown(wait=True)


def test_the_bench_reads_each_threads_cpu_under_its_name() -> None:
    """connector.dev.procs.thread_cpu_seconds: what bench/run.py splits the consumer process by."""
    import os

    from connector.dev.procs import thread_cpu_seconds

    done = threading.Event()
    seen: dict[int, tuple[str, float]] = {}

    def spin() -> None:
        name_os_thread()
        end = time.thread_time() + 0.05
        while time.thread_time() < end:  # CPU to account for, as much as the kernel's tick shows
            pass
        seen.update(thread_cpu_seconds(os.getpid()))
        done.set()

    t = threading.Thread(target=spin, name="sender_7")
    t.start()
    t.join()
    assert done.is_set()
    mine = [cpu for name, cpu in seen.values() if name == "sender_7"]
    assert mine and mine[0] > 0
    assert os.getpid() in seen  # the main thread is listed under the process id
