"""AEP streaming inlet (DCS) + IMS + Confluent Schema Registry emulator: a real HTTP server for
tests, ``make demo``, benchmarks and docker-compose. See docs/emulator.md."""

from __future__ import annotations

from typing import Any

from connector.dev.emulator.config import (
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    DEMO_EVENT_DATASET_ID,
    DEMO_EVENT_SCHEMA_ID,
    DEMO_INLET_ID,
    DEMO_ORG_ID,
    DEMO_PROFILE_DATASET_ID,
    DEMO_PROFILE_SCHEMA_ID,
    DatasetConfig,
    EmulatorConfig,
    ImsClientConfig,
    InletConfig,
    demo_config,
    load_config,
)

__all__ = [
    "DEMO_CLIENT_ID",
    "DEMO_CLIENT_SECRET",
    "DEMO_EVENT_DATASET_ID",
    "DEMO_EVENT_SCHEMA_ID",
    "DEMO_INLET_ID",
    "DEMO_ORG_ID",
    "DEMO_PROFILE_DATASET_ID",
    "DEMO_PROFILE_SCHEMA_ID",
    "DatasetConfig",
    "EmulatorConfig",
    "ImsClientConfig",
    "InletConfig",
    "create_app",
    "demo_config",
    "load_config",
    "serve",
]


def __getattr__(name: str) -> Any:
    # The server is imported on first use: the config constants (demo ids) are wanted alone, e.g. by
    # the benchmarks, also against an older tree of the connector (bench/stages.py --ab).
    if name in ("create_app", "serve"):
        from connector.dev.emulator import app

        return getattr(app, name)
    raise AttributeError(name)
