"""Fault-injection knobs, set through ``POST /__emulator/faults`` (merged into the current set)
and cleared with ``DELETE``. Counts decrement only when a fault actually fires, so
``{"status": 503, "count": 2}`` fails exactly the next two DCS requests."""

from __future__ import annotations

import random
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class MessageFault(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: int = Field(500, ge=400, le=599)
    rate: float = Field(1.0, ge=0, le=1)
    count: int | None = Field(None, ge=0)  # None: until cleared
    message: str | None = None


class StatusShare(BaseModel):
    """One answer of a mixed degraded inlet: ``rate`` of all requests get ``status``."""

    model_config = ConfigDict(extra="forbid")

    status: int = Field(..., ge=400, le=599)
    rate: float = Field(..., ge=0, le=1)
    retry_after: str | None = None


class Faults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Whole-request failure of DCS requests.
    status: int | None = Field(None, ge=400, le=599)
    rate: float = Field(1.0, ge=0, le=1)
    count: int | None = Field(None, ge=0)
    retry_after: str | None = None  # Retry-After header value on forced responses (seconds or HTTP date)
    body: str | None = None  # override the forced response body (default: empty, or problem JSON for 4xx)
    # A degraded inlet: each request draws one of these shares (rates add up to at most 1), until cleared.
    status_mix: list[StatusShare] = Field(default_factory=list)
    # Added to every DCS request with asyncio.sleep (other requests keep being served).
    latency_ms: float = Field(0.0, ge=0)
    latency_jitter_ms: float = Field(0.0, ge=0)
    # Close the connection without any response.
    drop_connection_rate: float = Field(0.0, ge=0, le=1)
    drop_connection_count: int | None = Field(None, ge=0)
    # Per-message failures inside a 207 (and on the single endpoint).
    message_status: MessageFault | None = None
    message_status_by_id: dict[str, MessageFault] = Field(default_factory=dict)
    # IMS.
    ims_status: int | None = Field(None, ge=400, le=599)
    ims_count: int | None = Field(None, ge=0)
    ims_latency_ms: float = Field(0.0, ge=0)
    token_ttl_s: float | None = Field(None, gt=0)  # TTL of tokens issued from now on (None: config value)

    @field_validator("message_status_by_id", mode="before")
    @classmethod
    def _status_shorthand(cls, value: Any) -> Any:
        # {"<_id>": 400} is shorthand for {"<_id>": {"status": 400}}.
        if isinstance(value, dict):
            return {k: {"status": v} if isinstance(v, int) else v for k, v in value.items()}
        return value


class FaultState:
    def __init__(self) -> None:
        self.faults = Faults()
        self._rng = random.Random()

    def merge(self, patch: dict[str, Any]) -> Faults:
        """Merge ``patch`` (validated as a whole) into the current knobs; ``message_status_by_id`` merges per id."""
        current = self.faults.model_dump()
        by_id = patch.get("message_status_by_id")
        if isinstance(by_id, dict):
            merged = dict(current["message_status_by_id"])
            merged.update(Faults.model_validate({"message_status_by_id": by_id}).model_dump()["message_status_by_id"])
            patch = {**patch, "message_status_by_id": merged}
        self.faults = Faults.model_validate({**current, **patch})
        return self.faults

    def clear(self) -> None:
        self.faults = Faults()

    def _fires(self, rate: float) -> bool:
        return rate >= 1.0 or (rate > 0 and self._rng.random() < rate)

    def latency_s(self) -> float:
        f = self.faults
        if not f.latency_ms and not f.latency_jitter_ms:
            return 0.0
        return (f.latency_ms + self._rng.uniform(0, f.latency_jitter_ms)) / 1000.0

    def take_drop(self) -> bool:
        f = self.faults
        if not f.drop_connection_rate or not self._fires(f.drop_connection_rate):
            return False
        if f.drop_connection_count is not None:
            if f.drop_connection_count <= 0:
                return False
            f.drop_connection_count -= 1
            if f.drop_connection_count == 0:
                f.drop_connection_rate = 0.0
                f.drop_connection_count = None
        return True

    def take_status(self) -> int | None:
        f = self.faults
        if f.status is None or not self._fires(f.rate):
            return None
        status = f.status
        if f.count is not None:
            f.count -= 1
            if f.count <= 0:
                f.status, f.count = None, None
        return status

    def take_mixed(self) -> StatusShare | None:
        """The share of ``status_mix`` this request falls in, or None (answered normally)."""
        mix = self.faults.status_mix
        if not mix:
            return None
        draw = self._rng.random()
        for share in mix:
            if draw < share.rate:
                return share
            draw -= share.rate
        return None

    def take_ims_status(self) -> int | None:
        f = self.faults
        if f.ims_status is None:
            return None
        status = f.ims_status
        if f.ims_count is not None:
            f.ims_count -= 1
            if f.ims_count <= 0:
                f.ims_status, f.ims_count = None, None
        return status

    @property
    def has_message_faults(self) -> bool:
        return self.faults.message_status is not None or bool(self.faults.message_status_by_id)

    def take_message_fault(self, record_id: object) -> MessageFault | None:
        """The fault for one message (by ``_id`` first, then the random rate), or None."""
        f = self.faults
        if f.message_status_by_id and isinstance(record_id, str):
            mf = f.message_status_by_id.get(record_id)
            if mf is not None and self._fires(mf.rate) and self._consume(mf):
                if mf.count == 0:
                    del f.message_status_by_id[record_id]
                return mf
        mf = f.message_status
        if mf is not None and self._fires(mf.rate) and self._consume(mf):
            if mf.count == 0:
                f.message_status = None
            return mf
        return None

    @staticmethod
    def _consume(mf: MessageFault) -> bool:
        if mf.count is None:
            return True
        if mf.count <= 0:
            return False
        mf.count -= 1
        return True
