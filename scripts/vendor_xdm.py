#!/usr/bin/env python3
"""Copy the subset of the official adobe/xdm schemas the connector and its tests need into vendor/adobe-xdm.

The subset is every schema file reachable through ``$ref`` from the class and standard field groups the
connector writes (scripts/build_xdm_schemas.py COMPOSITIONS), so the suite and the build script need nothing
outside the repository. Files are copied unchanged, with the licence (CC BY 4.0) and a README naming the commit.

Usage: python scripts/vendor_xdm.py --xdm PATH/TO/adobe-xdm [--out vendor/adobe-xdm]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _build_script() -> Any:
    spec = importlib.util.spec_from_file_location("build_xdm_schemas", ROOT / "scripts" / "build_xdm_schemas.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _refs(node: Any) -> set[str]:
    found: set[str] = set()
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ref = item.get("$ref")
            if isinstance(ref, str) and ref.partition("#")[0]:
                found.add(ref.partition("#")[0])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def closure(xdm_root: Path, roots: set[str]) -> dict[str, Path]:
    """Every schema ``$id`` reachable from ``roots``, with its file."""
    files: dict[str, Path] = {}
    for path in (xdm_root / "components").rglob("*.schema.json"):
        doc = json.loads(path.read_text())
        if "$id" in doc:
            files[doc["$id"]] = path
    wanted, todo = {}, list(roots)
    while todo:
        uri = todo.pop()
        if uri in wanted:
            continue
        if uri not in files:
            raise SystemExit(f"{uri} is referenced but not under {xdm_root}/components")
        wanted[uri] = files[uri]
        todo.extend(_refs(json.loads(files[uri].read_text())) - wanted.keys())
    return wanted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--xdm", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=ROOT / "vendor" / "adobe-xdm")
    args = parser.parse_args(argv)
    build = _build_script()
    roots = {ref for refs in build.COMPOSITIONS.values() for ref in refs}
    wanted = closure(args.xdm, roots)
    if args.out.exists():
        shutil.rmtree(args.out)
    for path in sorted(wanted.values()):
        target = args.out / path.relative_to(args.xdm)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    shutil.copyfile(args.xdm / "LICENSE", args.out / "LICENSE")
    commit = build.source_commit(args.xdm)
    listing = "\n".join(f"- {p.relative_to(args.xdm)}" for p in sorted(wanted.values()))
    (args.out / "README.md").write_text(
        "# Official XDM schemas (vendored subset)\n\n"
        f"Copied unchanged from the public repository adobe/xdm at commit {commit} by\n"
        "`scripts/vendor_xdm.py`: every schema reachable through `$ref` from the class and standard field\n"
        "groups the connector writes. Licensed CC BY 4.0 (see LICENSE), attribution to Adobe Systems\n"
        "Incorporated. Used by `scripts/build_xdm_schemas.py` and by the tests that check the connector's\n"
        "output and `xdm export` against the official schemas; never read at run time.\n\n"
        f"{len(wanted)} files:\n\n{listing}\n")
    print(f"vendored {len(wanted)} schemas into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
