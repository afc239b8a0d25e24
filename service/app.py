"""App factory and lifespan. Nothing heavy happens at import: models load in the lifespan."""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response
from fastapi_offline import FastAPIOffline

from service import (
    __version__,
    grpc_v2,
    log_sink,
    metrics,
    openapi_doc,
    routes_repository,
    routes_stream,
    routes_v1,
    routes_v2,
    ui,
)
from service.auth import ApiKeys
from service.cors import JsonCORSMiddleware
from service.direct_route import DirectSentiment
from service.drain import Drain
from service.early_refusal import ArrivalReleaseMiddleware, EarlyRefusal
from service.errors import install_error_handlers
from service.hot_routes import HotRouteMiddleware
from service.loop_budget import PassBudget
from service.middleware import RequestContextMiddleware
from service.onnx_session import ModelLoadError
from service.open_files import OpenFilesWatch
from service.registry import ModelRegistry
from service.repository import ModelControl
from service.settings import Settings

log = logging.getLogger("seqserve")


def load_models(settings: Settings) -> ModelRegistry:
    """Every model of the repository, or ModelLoadError naming the file, said in one line."""
    try:
        return ModelRegistry.load(settings)
    except ModelLoadError as exc:
        log.error("refusing to start: %s", exc)
        raise


def create_app(settings: Settings | None = None, registry: ModelRegistry | None = None,
               loading_since: float | None = None) -> FastAPI:
    """The app; it loads the models at start-up unless given them loaded (service/server.py loads
    them first, so that a refusal is one line and an exit code, not a traceback of the lifespan;
    ``loading_since``: its time.monotonic() when that load began, for the "ready in" line)."""
    settings = settings or Settings()
    preloaded = registry

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started = loading_since or time.monotonic()
        app.state.ready = False
        registry = preloaded or load_models(settings)
        app.state.registry = registry
        app.state.model_control = ModelControl(registry, settings)
        log_sink.stderr.start()  # at the event loop's priority, before threads with a lower one
        registry.start(app.state.pass_budget.give_way)
        grpc_server = await grpc_v2.start(app.state, settings)
        app.state.drain.registry, app.state.drain.grpc = registry, grpc_server
        # what is loaded now lives as long as the process: keep it out of every collection, and
        # collect less often (each request allocates many short-lived objects)
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
        app.state.early_refusal.open(registry)
        app.state.ready = True
        lag_watch = asyncio.create_task(metrics.watch_event_loop_lag())
        files_watch = asyncio.create_task(OpenFilesWatch().run())
        log.info("ready in %.2fs: %s", time.monotonic() - started,
                 ", ".join(f"{m.name}/{m.version} on {m.provider} ({m.precision})" for m in registry.all()))
        try:
            yield
        except asyncio.CancelledError:
            if not app.state.drain.cut_short:
                raise
            # uvicorn's force quit (a second Ctrl+C) cancels the lifespan instead of ending it: the
            # shutdown below is still this one's, and no error (uvicorn logged it with a traceback)
        finally:
            lag_watch.cancel()
            files_watch.cancel()
            app.state.ready = False
            app.state.early_refusal.close()
            # HTTP is done: the models finish within what is left of the deadline fixed at SIGTERM
            # (service/drain.py)
            drained = await app.state.drain.finish()
            await asyncio.sleep(0)  # the HTTP requests cut off at the deadline answer first (counted)
            log.info("shutdown: %s", app.state.drain.summary(drained))
            await app.state.model_control.finish()  # versions unloaded meanwhile are closed too
            await registry.close()

    extra: dict[str, Any] = {}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters and not settings.fastapi_telemetry:
        # newer FastAPI wraps every request in OpenTelemetry; /metrics and the access log already
        # cover it, and on a small CPU the wrapper is a measurable share of each request
        extra["telemetry"] = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}
    # /docs and /redoc with their scripts served from the package (fastapi-offline), not from a CDN:
    # the page works offline and behind a firewall, with Swagger UI 5 (which reads OpenAPI 3.1). The
    # two pages are service/openapi_doc.py's, which link relatively (under a proxy's prefix too).
    app = FastAPIOffline(title="seqserve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                         description="Recurrent sequence models (sentiment LSTM, attention translator) over ONNX "
                                     "Runtime with dynamic batching. REST v1 and the Open Inference Protocol (v2).",
                         # a path one slash off is redirected relatively (service/errors.py), not to
                         # Starlette's absolute URL, which says http:// behind a TLS proxy
                         redirect_slashes=False, **extra)
    app.state.settings = settings
    app.state.ready = False
    # refusals on arrival while a model is full, in the server's protocol (service/http_protocol.py)
    app.state.early_refusal = EarlyRefusal(settings)
    # a share of requests starts per event-loop pass, in the server's protocol (service/loop_budget.py)
    app.state.pass_budget = PassBudget(settings.requests_per_loop_pass)
    app.state.drain = Drain(settings.drain_timeout_s)  # the graceful shutdown (service/drain.py)
    # the plainest sentiment requests, answered in the server's protocol (service/direct_route.py);
    # with API keys every request goes through the app, which checks them
    app.state.direct_sentiment = DirectSentiment(app.state, settings, app.state.drain) \
        if settings.direct_routes and not settings.api_keys else None
    install_error_handlers(app)
    routers = (routes_v1.router, routes_v2.router, routes_repository.router, routes_stream.router, ui.router)
    for router in routers:
        app.include_router(router)
    openapi_doc.install(app, settings, ui.PUBLIC_PATHS)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    # Added last = runs first: CORS (a browser's preflight carries no key and is answered before
    # anything else, and every answer a browser may read carries the CORS headers, the 401/413/415
    # below included), then request id, keys (on the head, before any body is read), size and
    # content-type checks, then the direct path to the inference endpoints (service/hot_routes.py).
    app.add_middleware(HotRouteMiddleware, fastapi_app=app, router=routes_v1.router,
                       paths=("/v1/sentiment", "/v1/translate"))
    api_keys = ApiKeys(settings.api_keys, settings.auth_exempt_paths, ui.PUBLIC_PATHS) if settings.api_keys else None
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_body_bytes, api_keys=api_keys,
                       log_requests=settings.access_log, drain=app.state.drain,
                       # every route with its template: the app's own (/docs, /metrics) and the routers'
                       routes=[*(r for r in app.router.routes if hasattr(r, "path")),
                               *(r for router in routers for r in router.routes)])
    if settings.cors_origins:
        app.add_middleware(JsonCORSMiddleware, log_requests=settings.access_log,
                           allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type", "Authorization", "X-API-Key", "X-Request-ID",
                                          "X-Request-Timeout", "Inference-Header-Content-Length"],
                           expose_headers=["X-Request-ID", "Retry-After", "Inference-Header-Content-Length"])
    # outermost: where a request stops counting as arriving for its model (service/early_refusal.py)
    app.add_middleware(ArrivalReleaseMiddleware)
    return app
