"""The demo page: a few static files (service/static/) served at /ui/, with / redirecting there.

The files are read once at import (they ship as package data) and served from memory; only the
names in PAGE_FILES exist. PUBLIC_PATHS lists the exact paths that need no API key: the page
itself holds no secret, and its calls to the API carry the key the user types into it.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, HTTPException
from fastapi.responses import RedirectResponse, Response

_STATIC = resources.files("service") / "static"
_TYPES = {"html": "text/html; charset=utf-8", "css": "text/css; charset=utf-8",
          "js": "text/javascript; charset=utf-8", "svg": "image/svg+xml"}
PAGE_FILES: dict[str, tuple[bytes, str]] = {
    entry.name: (entry.read_bytes(), _TYPES[entry.name.rsplit(".", 1)[-1]])
    for entry in _STATIC.iterdir() if entry.name.rsplit(".", 1)[-1] in _TYPES
}
PUBLIC_PATHS = frozenset({"/", "/ui", "/ui/", *(f"/ui/{name}" for name in PAGE_FILES)})

# The page loads nothing from elsewhere; its API calls may go to another origin (the server field).
# No Referer to other sites: the page's address may name a server (?api=).
_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "Content-Security-Policy": "default-src 'self'; connect-src 'self' http: https:; "
                                       "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'"}

router = APIRouter(include_in_schema=False)
# HEAD too (uptime monitors, link checkers): the same headers, no body (the server drops it)
_READ = ["GET", "HEAD"]


# Relative Locations: "ui/" from / or /ui is /ui/, and the same under whatever prefix a proxy
# serves seqserve at (/seqserve/ -> /seqserve/ui/), with the scheme the client used
@router.api_route("/", methods=_READ)
async def root() -> RedirectResponse:
    return RedirectResponse("ui/", status_code=307)


@router.api_route("/ui", methods=_READ)
async def ui_no_slash() -> RedirectResponse:
    return RedirectResponse("ui/", status_code=307)


def _file(name: str) -> Response:
    if name not in PAGE_FILES:
        raise HTTPException(404, "Not Found")
    body, media_type = PAGE_FILES[name]
    return Response(body, media_type=media_type, headers=_HEADERS)


@router.api_route("/ui/", methods=_READ)
async def index() -> Response:
    return _file("index.html")


@router.api_route("/ui/{name}", methods=_READ)
async def page_file(name: str) -> Response:
    return _file(name)
