"""A direct path to the inference endpoints, past the framework's per-request layers.

FastAPI routes every request through its exception middleware, exit-stack middleware, router
matching, dependency solving and a chain of ``send`` wrappers before the endpoint runs. On a
small CPU that framework cost is a large share of a millisecond-scale inference (profiled: about
a third of the event loop's time per sentiment request). The inference routes need none of it:
their endpoints take the raw ``Request`` and parse the body themselves.

This innermost middleware (it runs after request id, body limit, API keys and CORS) calls the
*same* endpoint functions that FastAPI has registered, with the same error handlers, for an
exact (method, path) match, and passes everything else on. OpenAPI, /docs and every other route
are FastAPI's as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import get_route_path
from starlette.types import ASGIApp, Receive, Scope, Send

Endpoint = Callable[[Request], Awaitable[Response]]
ErrorHandler = Callable[[Request, Exception], Awaitable[Response]]


class HotRouteMiddleware:
    def __init__(self, app: ASGIApp, fastapi_app: FastAPI, router: APIRouter, paths: tuple[str, ...]) -> None:
        self.app = app
        self.fastapi_app = fastapi_app  # for its exception handlers
        self.routes = {(method, route.path): route for route in router.routes
                       if isinstance(route, APIRoute) and route.path in paths for method in route.methods or ()}
        if len({path for _, path in self.routes}) != len(paths):
            raise ValueError(f"hot routes {paths} are not all routes of the router")

    def _handler_for(self, exc: Exception) -> ErrorHandler | None:
        handlers = self.fastapi_app.exception_handlers
        for cls in type(exc).__mro__:
            if cls in handlers:
                return handlers[cls]  # type: ignore[return-value]
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get((scope["method"], get_route_path(scope))) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = route  # what the access log and metrics label the request with
        scope["endpoint"] = route.endpoint
        scope.setdefault("path_params", {})
        request = Request(scope, receive)
        endpoint: Endpoint = route.endpoint
        try:
            response = await endpoint(request)
        except Exception as exc:
            handler = self._handler_for(exc)
            if handler is None:
                raise  # not a client error: the server-error middleware answers 500, as for any route
            response = await handler(request, exc)
        await response(scope, receive, send)
