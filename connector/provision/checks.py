"""Is an object found by name the one ``provision`` would have made? Each function lists how it
differs (empty: reuse it). A same-named dataset on another schema, an unauthenticated connection or
a disabled dataflow would take the connector's data somewhere else, or nowhere: reusing one must be
an error that says what differs, not a silent success. Pure; no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from connector.errors import ConnectorError
from connector.provision import artifacts as art
from connector.provision.platform import PlatformError


class Mismatch(PlatformError):
    """An object under provision's name exists but is not what provision makes (exit 8)."""

    def __init__(self, what: str, name: str, differences: list[str]) -> None:
        self.status = None
        self.differences = differences
        ConnectorError.__init__(self, f"existing {what} {name!r} does not match what provision makes: "
                                      f"{'; '.join(differences)}. Fix or rename it in AEP, or provision under "
                                      "another --prefix.")


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


def _ids(values: Any) -> list[str]:
    return [str(v) for v in values] if isinstance(values, list) else []


def schema(found: dict[str, Any], class_id: str, group_id: str) -> list[str]:
    """A schema reuses when it is of the class and includes our tenant field group."""
    out = []
    if found.get("meta:class") != class_id:
        out.append(f"class is {found.get('meta:class')!r}, expected {class_id!r}")
    refs = [part.get("$ref") for part in found.get("allOf") or () if isinstance(part, dict)]
    if group_id != "" and group_id not in refs:
        out.append(f"does not include the field group {group_id}")
    return out


def dataset(found: dict[str, Any], schema_id: str, tags: dict[str, list[str]]) -> list[str]:
    out = []
    ref = _get(found, "schemaRef", "id")
    if ref != schema_id:
        out.append(f"schemaRef is {ref!r}, expected {schema_id!r}")
    have = found.get("tags")
    have = have if isinstance(have, dict) else {}
    for tag, values in tags.items():
        missing = [v for v in values if v not in _ids(have.get(tag))]
        if missing:
            out.append(f"tag {tag} lacks {missing}")
    return out


def connection(found: dict[str, Any], authenticated: bool) -> list[str]:
    out = _spec(found, "connectionSpec", "connection spec", art.HTTP_API_CONNECTION_SPEC, "the HTTP API's ")
    params = _get(found, "auth", "params") or {}
    if params.get("dataType", "xdm") != "xdm":
        out.append(f"dataType is {params.get('dataType')!r}, expected 'xdm'")
    if bool(params.get("authenticationRequired", False)) != authenticated:
        out.append(f"authenticationRequired is {bool(params.get('authenticationRequired', False))}, "
                   f"expected {authenticated}")
    if not params.get("inletId"):
        out.append("has no inletId")
    return out + _state(found)


def source_connection(found: dict[str, Any], base_id: str) -> list[str]:
    out = []
    if found.get("baseConnectionId") != base_id:
        out.append(f"baseConnectionId is {found.get('baseConnectionId')!r}, expected {base_id!r}")
    out += _spec(found, "connectionSpec", "connection spec", art.HTTP_API_CONNECTION_SPEC)
    return out + _state(found)


def target_connection(found: dict[str, Any], schema_id: str, dataset_id: str) -> list[str]:
    out = _spec(found, "connectionSpec", "connection spec", art.DATA_LAKE_CONNECTION_SPEC, "the data lake's ")
    if _get(found, "params", "dataSetId") != dataset_id:
        out.append(f"dataSetId is {_get(found, 'params', 'dataSetId')!r}, expected {dataset_id!r}")
    if _get(found, "data", "schema", "id") != schema_id:
        out.append(f"schema is {_get(found, 'data', 'schema', 'id')!r}, expected {schema_id!r}")
    return out + _state(found)


def flow(found: dict[str, Any], source_id: str, target_id: str) -> list[str]:
    out = _spec(found, "flowSpec", "flow spec", art.HTTP_API_FLOW_SPEC)
    out += _refs("sourceConnectionIds", found.get("sourceConnectionIds"), source_id)
    out += _refs("targetConnectionIds", found.get("targetConnectionIds"), target_id)
    if found.get("state") != "enabled":  # a flow always has one; only an enabled flow moves data
        out.append(f"state is {found.get('state')!r}, expected 'enabled'")
    return out


def _spec(found: dict[str, Any], key: str, what: str, expected: str, label: str = "") -> list[str]:
    """``found[key].id`` against the spec id AEP documents for this object."""
    spec = _get(found, key, "id")
    return [] if spec == expected else [f"{what} is {spec!r}, expected {label}{expected}"]


def _refs(key: str, values: Any, expected: str) -> Iterable[str]:
    if _ids(values) != [expected]:
        yield f"{key} is {_ids(values)}, expected [{expected!r}]"


def _state(found: dict[str, Any]) -> list[str]:
    """Connections carry a state too; a disabled one carries nothing (absent: not reported)."""
    state = found.get("state")
    return [] if state in (None, "enabled") else [f"state is {state!r}, expected 'enabled'"]
