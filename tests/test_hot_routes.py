"""The direct path runs the same endpoint with the same error handlers, and nothing else."""

from __future__ import annotations

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from service.errors import InvalidInput, install_error_handlers
from service.hot_routes import HotRouteMiddleware


def _app() -> tuple[FastAPI, list[str]]:
    seen: list[str] = []
    router = APIRouter(prefix="/v1")

    @router.post("/echo")
    async def echo(request: Request) -> JSONResponse:
        body = await request.json()
        seen.append(request.scope["route"].path)
        if body.get("bad"):
            raise InvalidInput("bad is not allowed", field="bad", limit=0)
        if body.get("crash"):
            raise RuntimeError("a bug")
        return JSONResponse({"echo": body, "request_id": request.headers.get("x-request-id")})

    @router.post("/other")
    async def other() -> dict[str, str]:
        seen.append("other")
        return {"ok": "yes"}

    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    app.add_middleware(HotRouteMiddleware, fastapi_app=app, router=router, paths=("/v1/echo",))
    return app, seen


@pytest.mark.asyncio
async def test_hot_route_answers_like_the_framework_route() -> None:
    app, seen = _app()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                                 base_url="http://t") as client:
        r = await client.post("/v1/echo", json={"a": 1}, headers={"X-Request-ID": "abc"})
        assert r.status_code == 200 and r.json() == {"echo": {"a": 1}, "request_id": "abc"}
        r = await client.post("/v1/echo", json={"bad": True})  # the app's own handler renders it
        assert r.status_code == 422 and r.json() == {"error": "bad is not allowed", "code": "invalid_input",
                                                     "field": "bad", "limit": 0}
        r = await client.post("/v1/echo", json={"crash": True})  # a bug is a 500, as on any route
        assert r.status_code == 500
        r = await client.get("/v1/echo")  # other methods and paths go through FastAPI
        assert r.status_code == 405
        r = await client.post("/v1/other")
        assert r.status_code == 200 and r.json() == {"ok": "yes"}
    assert seen == ["/v1/echo", "/v1/echo", "/v1/echo", "other"]


def test_a_path_that_is_not_a_route_is_refused_at_start() -> None:
    app, _ = _app()
    with pytest.raises(ValueError, match="not all routes"):
        HotRouteMiddleware(app, fastapi_app=app, router=APIRouter(), paths=("/v1/echo",))
