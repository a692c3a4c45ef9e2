"""The one exception the transform raises: a record that can never become valid XDM."""

from __future__ import annotations

from typing import Literal

from connector.errors import ConnectorError

Reason = Literal["invalid_envelope", "unknown_event", "missing_field", "invalid_value", "future_timestamp", "xdm_invalid",
                 "identity_rejected"]
REASONS: frozenset[str] = frozenset(Reason.__args__)  # type: ignore[attr-defined] # a Literal's members, not in typing's stubs


class TransformError(ConnectorError):
    """``reason`` is a short bounded label (safe as a metric label); ``detail`` is human text.

    Details name fields and event types, never field values that could be personal data.
    """

    __slots__ = ("reason", "detail")

    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason: Reason = reason
        self.detail = detail[:500]

    def __reduce__(self):  # type: ignore[no-untyped-def]  # picklable across process pools
        return (TransformError, (self.reason, self.detail))
