"""An upstream for credential tests: several TLS ports on one aiohttp app, with routes that echo
what they received in awkward ways (headers, gzip, brotli, split chunks, unknown encodings,
redirects) and an OAuth token endpoint that rotates refresh tokens."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
import os
from dataclasses import dataclass, field

import brotli
import trustme
from aiohttp import web

from support import LoopbackServer, SeenRequest, server_tls


BROTLI_BOMB = brotli.compress(bytes(300 << 20), quality=5)


@dataclass
class TokenEndpoint:
    """RFC 6749 refresh: each refresh token works once and is replaced (rotation)."""

    valid_refresh: set[str] = field(default_factory=set)
    calls: int = 0
    counter: int = 0
    delay: float = 0.3
    client: tuple[str, str] = ("wardgate-client", "client-secret-value")
    # Authorization codes issued by /oauth/authorize: code -> (S256 challenge, redirect_uri).
    codes: dict[str, tuple[str, str]] = field(default_factory=dict)


class CredentialUpstream:
    def __init__(self, ca: trustme.CA, tls_ports: int) -> None:
        self.ca = ca
        self.seen: list[SeenRequest] = []
        self.ports: list[int] = []
        self.plain_port = 0
        self.tokens = TokenEndpoint()
        self._count = tls_ports
        self._server: LoopbackServer | None = None

    def url(self, index: int, path: str, host: str = "localhost") -> str:
        return f"https://{host}:{self.ports[index]}{path}"

    def plain_url(self, path: str) -> str:
        return f"http://localhost:{self.plain_port}{path}"

    def last(self, path: str) -> SeenRequest:
        return [r for r in self.seen if r.path.split("?")[0] == path.split("?")[0]][-1]

    def count(self, path: str) -> int:
        return sum(1 for r in self.seen if r.path.split("?")[0] == path.split("?")[0])

    async def _echo(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(SeenRequest(request.method, request.path_qs, dict(request.headers), body))
        kind = request.path.split("/")[2] if request.path.count("/") >= 2 else ""
        echo = json.dumps({"path": request.path_qs, "headers": dict(request.headers)}).encode()
        if kind == "gzip":
            return web.Response(body=gzip.compress(echo), headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
        if kind == "br":
            return web.Response(body=brotli.compress(echo), headers={"Content-Encoding": "br", "Content-Type": "application/json"})
        if kind == "weird":
            return web.Response(body=echo, headers={"Content-Encoding": "x-weird"})
        if kind == "header":
            return web.Response(text="ok", headers={"X-Echo": request.headers.get("Authorization", ""),
                                                    "X-Echo-Key": request.headers.get("X-Api-Key", "")})
        if kind == "big":
            return web.Response(body=b"x" * 8192)
        if kind in ("bigecho", "bigecho-gzip"):
            # Over the inspection limit even compressed (random filler), so streamed.
            body = os.urandom(4096).hex().encode() + echo
            if kind == "bigecho-gzip":
                return web.Response(body=gzip.compress(body), headers={"Content-Encoding": "gzip"})
            return web.Response(body=body)
        if kind in ("bigchunked", "bigchunked-gzip"):
            # Chunked, so of unknown length, and over the inspection limit (4096) before the echo, which
            # is split mid-secret across two writes: relayed once the limit is passed, scrubbed in flight.
            body = os.urandom(8192).hex().encode() + echo
            if kind == "bigchunked-gzip":
                body = gzip.compress(body)
            secret = request.headers.get("Authorization", "").split(" ")[-1].encode()
            cut = body.index(secret) + len(secret) // 2 if secret and secret in body else len(body) // 2
            headers = {"Content-Encoding": "gzip"} if kind == "bigchunked-gzip" else {}
            response = web.StreamResponse(headers=headers)
            response.enable_chunked_encoding()
            await response.prepare(request)
            for start in range(0, cut, 3000):
                await response.write(body[start:min(start + 3000, cut)])
            await asyncio.sleep(0.02)
            await response.write(body[cut:])
            await response.write_eof()
            return response
        if kind == "bomb":
            # 300 MiB of zeros in about 500 bytes of brotli, as JSON: it must not be inflated to be scrubbed.
            return web.Response(body=BROTLI_BOMB, headers={"Content-Encoding": "br", "Content-Type": "application/json"})
        if kind == "bigstall":
            # Over the inspection limit, then nothing for longer than any client waits: a gateway that
            # buffered it whole before judging it would hold the agent (and the bytes) that long.
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            await response.prepare(request)
            await response.write(b"s" * 8192)
            for _ in range(600):  # 60 s, or until the gateway hangs up
                if request.transport is None or request.transport.is_closing():
                    return response
                await asyncio.sleep(0.1)
            await response.write_eof()
            return response
        if kind == "sse":
            # An event stream echoing the credential, split across writes mid-secret.
            secret = request.headers.get("Authorization", "").split(" ")[-1].encode()
            event = b"data: " + secret + b"\n\n"
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(b"data: hello\n\n")
            for cut in (len(event) // 2, len(event) // 3):
                await response.write(event[:cut])
                await asyncio.sleep(0.02)
                await response.write(event[cut:])
            await response.write_eof()
            return response
        if kind == "redirect":
            return web.Response(status=302, headers={"Location": request.query["to"]})
        if kind == "chunked":
            # Split the echo in the middle of the credential so no single chunk holds all of it.
            secret = request.headers.get("Authorization", "").split(" ")[-1].encode()
            cut = echo.index(secret) + len(secret) // 2 if secret and secret in echo else len(echo) // 2
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            await response.write(echo[:cut])
            await asyncio.sleep(0.05)
            await response.write(echo[cut:])
            await response.write_eof()
            return response
        return web.Response(body=echo, content_type="application/json")

    async def _token(self, request: web.Request) -> web.Response:
        tokens = self.tokens
        tokens.calls += 1
        form = await request.post()
        await asyncio.sleep(tokens.delay)  # wide enough for concurrent calls to pile up

        expected = "Basic " + base64.b64encode(f"{tokens.client[0]}:{tokens.client[1]}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return web.json_response({"error": "invalid_client"}, status=401)
        if form.get("grant_type") == "authorization_code":
            issued = tokens.codes.pop(str(form.get("code")), None)
            verifier = str(form.get("code_verifier", ""))
            challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            if issued is None or issued != (challenge, form.get("redirect_uri")):
                return web.json_response({"error": "invalid_grant"}, status=400)
            tokens.counter += 1
            refresh = f"refresh-code-{tokens.counter}-0123456789"
            tokens.valid_refresh.add(refresh)
            return web.json_response({"access_token": f"access-code-{tokens.counter}-abcdefghij",
                                      "refresh_token": refresh, "expires_in": 3600, "token_type": "Bearer"})
        refresh = form.get("refresh_token")
        if form.get("grant_type") != "refresh_token" or refresh not in tokens.valid_refresh:
            return web.json_response({"error": "invalid_grant", "error_description": f"bad {refresh}"}, status=400)
        tokens.valid_refresh.discard(refresh)  # type: ignore[arg-type]
        tokens.counter += 1
        new_refresh = f"refresh-rotated-{tokens.counter}-0123456789"
        tokens.valid_refresh.add(new_refresh)
        return web.json_response({"access_token": f"access-fresh-{tokens.counter}-abcdefghij",
                                  "refresh_token": new_refresh, "expires_in": 3600, "token_type": "Bearer"})

    async def _authorize(self, request: web.Request) -> web.Response:
        """Approves at once (the test plays the user) and sends the browser back with a code."""
        query = request.query
        if query.get("code_challenge_method") != "S256" or query.get("client_id") != self.tokens.client[0]:
            return web.Response(status=400, text="PKCE S256 and a known client are required")
        code = f"code-{len(self.tokens.codes)}-{id(query)}"
        self.tokens.codes[code] = (query["code_challenge"], query["redirect_uri"])
        separator = "&" if "?" in query["redirect_uri"] else "?"
        return web.Response(status=302, headers={
            "Location": f"{query['redirect_uri']}{separator}code={code}&state={query['state']}"})

    def start(self) -> None:
        def build() -> web.Application:
            app = web.Application()
            app.router.add_post("/oauth/token", self._token)
            app.router.add_get("/oauth/authorize", self._authorize)
            app.router.add_route("*", "/{tail:.*}", self._echo)
            return app

        context = server_tls(self.ca)
        self._server = LoopbackServer(build, [None] + [context] * self._count)
        self.plain_port, *self.ports = self._server.start()

    def stop(self) -> None:
        if self._server:
            self._server.stop()
