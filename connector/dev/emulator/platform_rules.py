"""The Schema Registry's and Catalog's rules the emulated Platform APIs enforce, each from the
Experience League page named beside it (docs/emulator.md lists them). Functions of a request body
and what exists; a broken rule raises :class:`Refused` with every reason found. No I/O.
"""

from __future__ import annotations

from typing import Any

from jsonschema.exceptions import SchemaError
from jsonschema.validators import Draft7Validator

from connector.provision import artifacts as art
from connector.transform.xdm_rules import violations

CLASSES = (art.EVENT_CLASS, art.PROFILE_CLASS)
# The standard field groups the emulator can compose, and the classes each may extend (their
# meta:intendedToExtend in the official XDM repository; empty: any class).
STANDARD_FIELD_GROUPS: dict[str, tuple[str, ...]] = {
    "https://ns.adobe.com/xdm/context/experienceevent-commerce": (art.EVENT_CLASS,),
    "https://ns.adobe.com/xdm/context/experienceevent-loyalty-details": (art.EVENT_CLASS,),
    "https://ns.adobe.com/xdm/context/identitymap": (),
    "https://ns.adobe.com/xdm/mixins/profile/profile-loyalty-details": (art.PROFILE_CLASS,),
    "https://ns.adobe.com/xdm/context/profile-person-details": (art.PROFILE_CLASS, art.EVENT_CLASS),
    "https://ns.adobe.com/xdm/context/profile-personal-details": (art.PROFILE_CLASS, art.EVENT_CLASS),
    "https://ns.adobe.com/xdm/common/external-source-system-audit-details": (),
}
PROFILE_TAGS = ("unifiedProfile", "unifiedIdentity")


class Refused(Exception):
    def __init__(self, title: str, reasons: list[str]) -> None:
        super().__init__(title)
        self.title, self.reasons = title, reasons


def check_field_group(body: dict[str, Any], tenant: str) -> None:
    """*Field groups endpoint*: custom fields only under ``_<tenant>``, ``meta:intendedToExtend``
    naming classes; *Define XDM fields* / *Define map fields*: every field a legal XDM field, maps
    of strings or integers only (:func:`connector.transform.xdm_rules.violations`)."""
    try:
        Draft7Validator.check_schema(body)
    except SchemaError as exc:
        raise Refused("Invalid field group", [exc.message]) from None
    reasons: list[str] = []
    extends = body.get("meta:intendedToExtend")
    if not isinstance(extends, list) or not extends:
        reasons.append("meta:intendedToExtend is required: the classes this field group extends")
    elif unknown := [c for c in extends if c not in CLASSES]:
        reasons.append(f"meta:intendedToExtend names unknown classes {unknown}")
    key = f"_{tenant}"
    blocks = [("properties", body.get("properties") or {})]
    blocks += [(f"definitions.{name}.properties", (d or {}).get("properties") or {})
               for name, d in (body.get("definitions") or {}).items() if isinstance(d, dict)]
    for where, props in blocks:
        for field, schema in props.items():
            if field != key:
                reasons.append(f"{where}: custom field {field!r} is not under {key}")
            else:
                reasons += [f"{where}: {v}" for v in violations(schema, f"/{key}")]
    if not any(field == key for _, props in blocks for field in props):
        reasons.append(f"the field group defines no fields under {key}")
    if reasons:
        raise Refused("Invalid field group", reasons)


def check_schema(body: dict[str, Any], field_groups: dict[str, dict[str, Any]]) -> str:
    """*Schemas endpoint* / *Field groups endpoint*: ``allOf`` starts with the class and then names
    field groups that exist and extend that class. Returns the class."""
    refs = [part.get("$ref") if isinstance(part, dict) else None for part in body.get("allOf") or ()]
    if not refs or refs[0] not in CLASSES:
        raise Refused("Invalid schema", ["allOf must start with the schema's class (XDM ExperienceEvent or "
                                         "XDM Individual Profile)"])
    cls, reasons = str(refs[0]), []
    for ref in refs[1:]:
        if ref in STANDARD_FIELD_GROUPS:
            extends: list[str] = list(STANDARD_FIELD_GROUPS[ref])
        elif isinstance(ref, str) and ref in field_groups:
            extends = list(field_groups[ref].get("meta:intendedToExtend") or ())
        else:
            reasons.append(f"field group {ref!r} does not exist")
            continue
        if extends and cls not in extends:
            reasons.append(f"field group {ref} extends {extends}, not the schema's class {cls}")
    if reasons:
        raise Refused("Invalid schema", reasons)
    return cls


def patched_tags(schema: dict[str, Any], ops: Any) -> list[str]:
    """*Schemas endpoint: enable a schema for Profile*: ``meta:immutableTags`` takes ``union``, and a
    schema in the union cannot leave it. JSON Patch semantics: ``add`` on an existing member
    replaces it. Only this path is emulated."""
    if not isinstance(ops, list) or not ops:
        raise Refused("Bad Request", ["the body must be a JSON Patch array"])
    tags = list(schema.get("meta:immutableTags") or [])
    for op in ops:
        if not isinstance(op, dict) or op.get("path") != "/meta:immutableTags":
            raise Refused("Bad Request", [f"operation {op!r}: the emulator implements only /meta:immutableTags"])
        if op.get("op") in ("add", "replace"):
            if not isinstance(op.get("value"), list):
                raise Refused("Bad Request", ["meta:immutableTags must be an array"])
            tags = [str(v) for v in op["value"]]
        elif op.get("op") == "remove":
            tags = []
        else:
            raise Refused("Bad Request", [f"operation {op.get('op')!r} is not supported on /meta:immutableTags"])
        if "union" in (schema.get("meta:immutableTags") or ()) and "union" not in tags:
            raise Refused("Bad Request", ["a schema enabled for Profile (in the union) cannot be disabled"])
    return sorted(set(tags))


def check_dataset(body: dict[str, Any], schema: dict[str, Any]) -> None:
    """*Catalog: enable a dataset for Profile* (and Identity): the tags need a schema in the union."""
    tags = body.get("tags") or {}
    if not isinstance(tags, dict):
        raise Refused("Bad Request", ["tags must be an object"])
    content_type = str((body.get("schemaRef") or {}).get("contentType", ""))
    if not content_type.startswith("application/vnd.adobe.xed") or "version=" not in content_type:
        raise Refused("Bad Request", ["schemaRef.contentType must name the XED format and its version"])
    enabled = [tag for tag in PROFILE_TAGS if "enabled:true" in (tags.get(tag) or ())]
    if enabled and "union" not in (schema.get("meta:immutableTags") or ()):
        raise Refused("Bad Request", [f"{', '.join(enabled)}: the dataset's schema {schema['$id']} is not "
                                      "enabled for Profile (meta:immutableTags has no 'union')"])
