"""A tiny echo upstream for the demo and the quick start: answers with what it received."""

from __future__ import annotations

from aiohttp import web


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {
            "service": "wardgate-demo-echo",
            "method": request.method,
            "path": request.path_qs,
            "headers": {k: v for k, v in request.headers.items() if k.lower() != "host"},
            "body_bytes": len(body),
        }
    )


def build_echo_app() -> web.Application:
    app = web.Application(client_max_size=1 << 20)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app
