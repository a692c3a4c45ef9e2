"""Golden files: ``tests/golden/<event>.input.json`` → ``<event>.expected.json`` (all messages, fixed clock).

Regenerate after an intended mapping change with ``GOLDEN_REGEN=1 pytest tests/test_transform_golden.py``
and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from connector.dev.samples import sample_xdm_config
from connector.transform import Transformer

GOLDEN = Path(__file__).parent / "golden"
NOW = 1_760_000_000.0  # 2025-10-09T08:53:20Z, after every golden input
ORG = "0A1B2C3D4E5F@AdobeOrg"
CASES = sorted(p.name.removesuffix(".input.json") for p in GOLDEN.glob("*.input.json"))


def render(name: str, preflight: bool = True) -> list[dict]:
    transformer = Transformer(
        sample_xdm_config(preflight_validation=preflight), org_id=ORG, source_name="capillary-aep-connector",
        now=lambda: NOW,
    )
    raw = json.loads((GOLDEN / f"{name}.input.json").read_text())
    return [
        {"kind": m.kind, "eventName": m.event_name, "eventType": m.event_type, "envelope": m.envelope}
        for m in transformer.transform(raw)
    ]


@pytest.mark.parametrize("name", CASES)
def test_golden(name: str) -> None:
    actual = render(name)
    expected_path = GOLDEN / f"{name}.expected.json"
    if os.environ.get("GOLDEN_REGEN"):
        expected_path.write_text(json.dumps(actual, indent=2, ensure_ascii=False) + "\n")
    assert actual == json.loads(expected_path.read_text())


def test_every_mapped_event_has_a_golden_case() -> None:
    from connector.transform import EVENT_NAMES

    assert set(EVENT_NAMES) <= {c.split(".")[0] for c in CASES}
