"""The playground: a chat page served by the service itself (`/playground`, `/` redirects).

Plain HTML, CSS and JavaScript shipped in the package (`genai_service/web`): no CDN, no
external font, no build step. The page calls only the public OpenAI routes (`/v1/models`,
`/v1/chat/completions`), so it needs no API key itself; a key pasted into it stays in the
page's memory and goes out only as the `Authorization` header of those calls.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

router = APIRouter(include_in_schema=False)

_ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "playground.css": "text/css; charset=utf-8",
    "playground.js": "text/javascript; charset=utf-8",
}

# Everything comes from this origin; no inline script or style, no frames, no form posts.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@cache
def _read(name: str) -> bytes:
    return resources.files("genai_service").joinpath("web").joinpath(name).read_bytes()


def _asset(name: str) -> Response:
    return Response(_read(name), media_type=_ASSETS[name], headers=_HEADERS)


@router.api_route("/", methods=["GET", "HEAD"])  # HEAD: uptime checkers probe the root
async def root() -> RedirectResponse:
    return RedirectResponse("playground", status_code=307)  # relative: works under a prefix


@router.api_route("/playground", methods=["GET", "HEAD"])
async def page() -> Response:
    return _asset("index.html")


@router.get("/playground/playground.css")
async def stylesheet() -> Response:
    return _asset("playground.css")


@router.get("/playground/playground.js")
async def script() -> Response:
    return _asset("playground.js")
