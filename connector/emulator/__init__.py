"""AEP streaming inlet (DCS) + IMS + Confluent Schema Registry emulator: a real HTTP server for
tests, ``make demo``, benchmarks and docker-compose. See docs/emulator.md."""

from __future__ import annotations

from connector.emulator.app import create_app, serve
from connector.emulator.config import (
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
