"""The read-only audit web page: static HTML, CSS and JS served by the admin API.

The files hold no data; the page's script reads ``/v1/audit/records`` with the admin token the user
supplies, so the page itself needs no authentication. A strict Content-Security-Policy allows only
same-origin scripts, styles and fetches.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).resolve().parent / "static"
FILES = {"/ui/audit": ("audit.html", "text/html"), "/ui/audit.js": ("audit.js", "application/javascript"),
         "/ui/audit.css": ("audit.css", "text/css")}
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def add_routes(app: web.Application) -> None:
    for route, (name, content_type) in FILES.items():
        body = (STATIC / name).read_bytes()

        async def handler(request: web.Request, body: bytes = body, content_type: str = content_type) -> web.Response:
            return web.Response(body=body, content_type=content_type, headers=HEADERS)

        app.router.add_get(route, handler)
