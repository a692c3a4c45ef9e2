#!/usr/bin/env python3
"""Build the compact XDM JSON Schemas the transform validates against at run time.

The official adobe/xdm schemas (JSON-LD property names, ``$ref``/``allOf`` across hundreds of
files) are not available where the connector runs, so this script resolves the class and field
groups the connector writes into two self-contained JSON Schemas:

* ``connector/transform/xdm/experienceevent.json``: XDM ExperienceEvent + IdentityMap + Commerce
  Details + Loyalty Event Details;
* ``connector/transform/xdm/profile.json``: XDM Individual Profile + IdentityMap + Loyalty Details +
  Person Details (``person``) + Personal Contact Details + External Source System Audit Details
  (``extSourceSystemAudit.lastUpdatedDate``: the source time of a profile update, for
  timestamp-ordered merge policies).

Translation follows AEP's "xed-full" JSON: ``xdm:foo`` → ``foo``, ``@id`` → ``_id`` (other JSON-LD
prefixes, which the connector never writes, are kept as they are). ``$ref`` and ``allOf`` are
resolved and merged; ``required``, ``type``, ``format``, ``pattern``, ``enum``, bounds and map
``additionalProperties`` are kept; every object XDM defines with ``properties`` is closed
(``additionalProperties: false``), as AEP rejects unknown fields. The tenant namespace
(``_<tenant>``) is added at load time by :mod:`connector.transform.validate`, free-form.

Usage: python scripts/build_xdm_schemas.py [--xdm vendor/adobe-xdm] [--out connector/transform/xdm]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXTENSIBLE_CONTEXT = "https://ns.adobe.com/xdm/common/extensible#/definitions/@context"
COMPOSITIONS: dict[str, list[str]] = {
    "experienceevent": [
        "https://ns.adobe.com/xdm/context/experienceevent",
        "https://ns.adobe.com/xdm/context/experienceevent-commerce",
        "https://ns.adobe.com/xdm/context/experienceevent-loyalty-details",
    ],
    "profile": [
        "https://ns.adobe.com/xdm/context/profile",
        "https://ns.adobe.com/xdm/context/identitymap",
        "https://ns.adobe.com/xdm/mixins/profile/profile-loyalty-details",
        "https://ns.adobe.com/xdm/context/profile-person-details",
        "https://ns.adobe.com/xdm/context/profile-personal-details",
        "https://ns.adobe.com/xdm/common/external-source-system-audit-details",
    ],
}
KEEP = ("type", "format", "pattern", "enum", "const", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
        "minLength", "maxLength", "minItems", "maxItems")


def translate_name(name: str) -> str:
    if name == "@id":
        return "_id"
    if name.startswith("xdm:"):
        return name[4:]
    return name


class Resolver:
    def __init__(self, xdm_root: Path) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        for path in (xdm_root / "components").rglob("*.schema.json"):
            doc = json.loads(path.read_text())
            if "$id" in doc:
                self.docs[doc["$id"]] = doc

    def document(self, uri: str) -> dict[str, Any]:
        try:
            return self.docs[uri]
        except KeyError:
            raise SystemExit(f"schema {uri} not found under the XDM components") from None

    def follow(self, ref: str, base: str) -> tuple[dict[str, Any], str]:
        uri, _, pointer = ref.partition("#")
        uri = uri or base
        node: Any = self.document(uri)
        for part in filter(None, pointer.split("/")):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node, uri

    def resolve(self, node: dict[str, Any], base: str, depth: int = 0) -> dict[str, Any]:
        """A plain schema (no $ref, no allOf, translated names) equivalent to ``node``."""
        if depth > 60:
            raise SystemExit(f"reference cycle below {base}")
        parts: list[dict[str, Any]] = []
        if "$ref" in node and node["$ref"] != EXTENSIBLE_CONTEXT:  # JSON-LD prefix rules: meaningless in xed-full
                target, target_base = self.follow(node["$ref"], base)
                parts.append(self.resolve(target, target_base, depth + 1))
        for sub in node.get("allOf", ()):
            if sub.get("$ref") == EXTENSIBLE_CONTEXT:
                continue
            parts.append(self.resolve(sub, base, depth + 1))
        own: dict[str, Any] = {k: node[k] for k in KEEP if k in node}
        if "required" in node:
            own["required"] = [translate_name(r) for r in node["required"]]
        if "properties" in node:
            own["properties"] = {
                translate_name(k): self.resolve(v, base, depth + 1) for k, v in node["properties"].items()
            }
        if "items" in node and isinstance(node["items"], dict):
            own["items"] = self.resolve(node["items"], base, depth + 1)
        additional = node.get("additionalProperties")
        if isinstance(additional, dict):
            own["additionalProperties"] = self.resolve(additional, base, depth + 1)
        elif additional is False:
            own["additionalProperties"] = False
        if node.get("meta:xdmType") == "map":
            own["x-map"] = True
        for part in parts:
            own = merge(own, part)
        return own


def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Merge two resolved schemas as ``allOf`` composes them (properties merged field by field)."""
    out = dict(a)
    for key, value in b.items():
        if key not in out:
            out[key] = value
        elif key == "properties":
            props = dict(out["properties"])
            for name, schema in value.items():
                props[name] = merge(props[name], schema) if name in props else schema
            out["properties"] = props
        elif key == "required":
            out["required"] = sorted(set(out["required"]) | set(value))
        elif key == "items":
            out["items"] = merge(out["items"], value)
        elif out[key] != value:
            raise SystemExit(f"conflicting {key!r} while merging: {out[key]!r} vs {value!r}")
    return out


def close(schema: dict[str, Any]) -> dict[str, Any]:
    """Close every object that XDM defines by its properties; maps stay open (their values typed)."""
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {k: close(v) for k, v in out["properties"].items()}
        out.setdefault("additionalProperties", False)
        out.setdefault("type", "object")
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = close(out["additionalProperties"])
    if isinstance(out.get("items"), dict):
        out["items"] = close(out["items"])
    out.pop("x-map", None)
    return out


def build(xdm_root: Path, out_dir: Path) -> None:
    resolver = Resolver(xdm_root)
    commit = source_commit(xdm_root)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, ids in COMPOSITIONS.items():
        schema: dict[str, Any] = {}
        for schema_id in ids:
            schema = merge(schema, resolver.resolve(resolver.document(schema_id), schema_id))
        schema = close(schema)
        schema.pop("x-map", None)
        doc = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$comment": f"Generated by scripts/build_xdm_schemas.py from adobe/xdm {commit}: "
                        + ", ".join(ids) + ". Do not edit.",
            "title": name,
            **schema,
        }
        path = out_dir / f"{name}.json"
        path.write_text(json.dumps(doc, separators=(",", ":"), sort_keys=True) + "\n")
        print(f"wrote {path} ({path.stat().st_size} bytes)")


def source_commit(xdm_root: Path) -> str:
    """The adobe/xdm commit of ``xdm_root``: its own git checkout, else the commit its README names."""
    if (xdm_root / ".git").exists():
        try:
            out = subprocess.run(["git", "-C", str(xdm_root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                 timeout=10)
            if out.returncode == 0:
                return out.stdout.strip()
        except OSError:
            pass
    readme = xdm_root / "README.md"
    found = re.search(r"commit ([0-9a-f]{40})", readme.read_text()) if readme.is_file() else None
    return found.group(1) if found else "4a4fc5f8dd175cd81f2419b85130a6fc25053890"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--xdm", type=Path, default=ROOT / "vendor" / "adobe-xdm")
    parser.add_argument("--out", type=Path, default=ROOT / "connector" / "transform" / "xdm")
    args = parser.parse_args(argv)
    build(args.xdm, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
