"""XDM validation against a dataset's JSON Schema: synchronous (``syncValidation=true``) and the
default asynchronous mode, where accepted records are checked on a background thread and land
in the dataset's ``records`` or ``failed`` list (AEP's "failed batches")."""

from __future__ import annotations

import json
import queue
import threading
from pathlib import Path
from typing import Any

from jsonschema import FormatChecker
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for

from connector.dev.emulator.store import DatasetRecords

MAX_VIOLATIONS = 5  # AEP's validator stops after 5 errors per message


def build_validator(schema: dict[str, Any] | str) -> Validator:
    if isinstance(schema, str):
        schema = json.loads(Path(schema).read_text())
    cls = validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=FormatChecker())


def violations(validator: Validator, entity: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for err in validator.iter_errors(entity):
        out.append({
            "schemaLocation": "#/" + "/".join(str(p) for p in err.schema_path),
            "pointerToViolation": "#/" + "/".join(str(p) for p in err.absolute_path),
            "keyword": str(err.validator),
            "message": err.message,
        })
        if len(out) >= MAX_VIOLATIONS:
            break
    return out


class AsyncValidator:
    """One daemon thread draining a queue of (dataset records, validator, record) jobs."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[DatasetRecords, Validator, dict[str, Any]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def submit(self, ds: DatasetRecords, validator: Validator, record: dict[str, Any]) -> None:
        with ds.lock:
            ds.pending += 1
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="xdm-validator", daemon=True)
            self._thread.start()
        self._queue.put((ds, validator, record))

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            ds, validator, record = job
            errors = violations(validator, record.get("entity"))
            if not ds.keep_entities:
                record.pop("entity", None)
            with ds.lock:
                ds.pending -= 1
                if errors:
                    record["errors"] = errors
                    ds.failed.append(record)
                else:
                    ds.records.append(record)

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=5)
            self._thread = None
