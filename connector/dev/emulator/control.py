"""Test-only inspection and control API under ``/__emulator/``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

if TYPE_CHECKING:
    from connector.dev.emulator.app import Emulator

MAX_PAGE = 100_000


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _page(request: Request, default_limit: int = 1000) -> tuple[int, int]:
    try:
        offset = max(0, int(request.query_params.get("offset", 0)))
        limit = min(MAX_PAGE, max(0, int(request.query_params.get("limit", default_limit))))
    except ValueError:
        offset, limit = 0, default_limit
    return offset, limit


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    return orjson.loads(raw) if raw.strip() else {}


def control_routes(em: Emulator) -> list[Route]:
    store = em.store

    async def health(request: Request) -> Response:
        return _json({"ok": True})

    async def stats(request: Request) -> Response:
        out = store.stats()
        out["active_tokens"] = em.issuer.active
        return _json(out)

    async def messages(request: Request) -> Response:
        offset, limit = _page(request)
        return _json(store.messages_page(offset, limit))

    async def ids(request: Request) -> Response:
        return _json({"ids": store.ids})

    async def profiles(request: Request) -> Response:
        return _json({"profiles": store.profiles.state})

    async def rejections(request: Request) -> Response:
        offset, limit = _page(request)
        page = store.rejections[offset : offset + limit]
        return _json({"rejections": page, "next": offset + len(page), "total": len(store.rejections)})

    def _records(request: Request, which: str) -> Response:
        ds_id = request.path_params["dataset_id"]
        offset, limit = _page(request)
        recs = store.datasets.get(ds_id)
        if recs is None:
            validating = any(ds_id == d for (_, d) in em.dcs.validators)
            known = any(ds_id in inlet.datasets for inlet in em.cfg.inlets)
            if not known:
                return _json({"error": f"unknown dataset {ds_id}"}, 404)
            return _json({"datasetId": ds_id, "validation": "enabled" if validating else "disabled",
                          "pending": 0, "passed": 0, "failed": 0, "dropped_duplicates": 0,
                          "records": [], "next": offset, "total": 0})
        with recs.lock:
            items = recs.records if which == "records" else recs.failed
            page = list(items[offset : offset + limit])
            body = {"datasetId": ds_id, "validation": "enabled", "pending": recs.pending,
                    "passed": len(recs.records), "failed": len(recs.failed),
                    "dropped_duplicates": recs.dropped_duplicates,
                    "records": page, "next": offset + len(page), "total": len(items)}
        return _json(body)

    async def records(request: Request) -> Response:
        return _records(request, "records")

    async def failed(request: Request) -> Response:
        return _records(request, "failed")

    async def get_faults(request: Request) -> Response:
        return _json(em.faults.faults.model_dump())

    async def post_faults(request: Request) -> Response:
        try:
            patch = await _json_body(request)
        except orjson.JSONDecodeError as exc:
            return _json({"error": f"invalid JSON: {exc}"}, 400)
        if not isinstance(patch, dict):
            return _json({"error": "expected a JSON object"}, 400)
        revoke = bool(patch.pop("revoke_tokens", False))
        try:
            knobs = em.faults.merge(patch)
        except ValidationError as exc:
            return _json({"error": str(exc)}, 400)
        out = knobs.model_dump()
        if revoke:
            out["revoked_tokens"] = em.issuer.revoke_all()
        return _json(out)

    async def delete_faults(request: Request) -> Response:
        em.faults.clear()
        return _json(em.faults.faults.model_dump())

    async def reset(request: Request) -> Response:
        try:
            opts = await _json_body(request)
        except orjson.JSONDecodeError as exc:
            return _json({"error": f"invalid JSON: {exc}"}, 400)
        store.reset()
        done = ["store"]
        if isinstance(opts, dict):
            if opts.get("tokens"):
                em.issuer.revoke_all()
                done.append("tokens")
            if opts.get("faults"):
                em.faults.clear()
                done.append("faults")
            if opts.get("registry"):
                em.registry.reset()
                done.append("registry")
        return _json({"ok": True, "reset": done})

    async def config(request: Request) -> Response:
        return _json(em.cfg.model_dump(mode="json"))

    p = "/__emulator"
    return [
        Route(f"{p}/health", health, methods=["GET"]),
        Route(f"{p}/stats", stats, methods=["GET"]),
        Route(f"{p}/messages", messages, methods=["GET"]),
        Route(f"{p}/ids", ids, methods=["GET"]),
        Route(f"{p}/profiles", profiles, methods=["GET"]),
        Route(f"{p}/rejections", rejections, methods=["GET"]),
        Route(f"{p}/datasets/{{dataset_id}}/records", records, methods=["GET"]),
        Route(f"{p}/datasets/{{dataset_id}}/failed", failed, methods=["GET"]),
        Route(f"{p}/faults", get_faults, methods=["GET"]),
        Route(f"{p}/faults", post_faults, methods=["POST"]),
        Route(f"{p}/faults", delete_faults, methods=["DELETE"]),
        Route(f"{p}/reset", reset, methods=["POST"]),
        Route(f"{p}/config", config, methods=["GET"]),
    ]
