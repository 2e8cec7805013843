"""A fake Google upstream on a real socket: the Gemini API (AI Studio, `/v1beta/models/...`),
Vertex AI (`/v1/projects/P/locations/L/publishers/google/models/...`) and the OAuth token
endpoint google-auth calls for a service account (`/token`), written from Google's API
reference. It verifies what Google verifies: the `x-goog-api-key` header (Gemini API) or a
bearer token it issued and that has not expired (Vertex AI), the path, model and method,
and the request body (`gemini_checks.py`). The token endpoint checks the JWT-bearer grant:
its RSA signature against the test service account's public key, issuer, audience, scope.

Answers come from golden files in tests/data/gemini/ (JSON bodies and SSE transcripts);
a script of `GoogleReply`s overrides them one request at a time.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web

from tests.gemini_checks import check_embed, check_generate, check_predict

DATA = Path(__file__).parent / "data" / "gemini"
GEMINI_KEY = "AIza-fake-gemini-key-0123456789abcdefghi"
PROJECT, LOCATION = "test-project", "us-central1"
MODELS = {"gemini-2.5-flash", "gemini-2.5-pro", "gemini-3-pro-preview", "gemini-embedding-001",
          "text-embedding-005"}
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
# The audience Google's token endpoint takes in a JWT-bearer assertion (google-auth sends
# it whatever the key file's token_uri is).
TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"


def golden(name: str) -> Any:
    return json.loads((DATA / name).read_text())


def sse_events(name: str) -> list[bytes]:
    """The events of a golden SSE transcript, each with its CRLF blank line."""
    text = (DATA / name).read_bytes()
    return [event + b"\r\n\r\n" for event in text.split(b"\r\n\r\n") if event.strip()]


@dataclass
class Received:
    api: str  # gemini | vertex
    model: str
    method: str
    query: str
    headers: dict[str, str]
    body: Any


@dataclass
class GoogleReply:
    """What the fake does for one request (generate, embed, count, predict)."""

    status: int = 200
    body: Any = None  # JSON answer (or error body); None: the golden default
    golden: str | None = None  # a file in tests/data/gemini to answer with
    events: list[bytes] | None = None  # streams: the SSE events (default: golden)
    drop_after: int | None = None  # streams: close the connection after N events
    headers: dict[str, str] = field(default_factory=dict)
    event_delay_s: float = 0.0


@dataclass
class IssuedToken:
    token: str
    expires_at: float  # time.time()
    claims: dict[str, Any]


class FakeGoogle:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.script: deque[GoogleReply] = deque()
        self.tokens: list[IssuedToken] = []
        self.token_lifetime_s = 3600
        self.public_key_pem: str | None = None  # of the test service account
        self.client_email: str | None = None
        self.base_url = ""  # set once served: http://127.0.0.1:PORT
        self.cancelled = 0

    def then(self, *replies: GoogleReply) -> FakeGoogle:
        self.script.extend(replies)
        return self

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1beta/models/{target}", self._gemini)
        app.router.add_post("/v1/projects/{project}/locations/{location}/publishers/google/"
                            "models/{target}", self._vertex)
        app.router.add_post("/token", self._token)
        return app

    @property
    def token_uri(self) -> str:
        return f"{self.base_url}/token"

    # -- authentication --------------------------------------------------------------

    async def _gemini(self, request: web.Request) -> web.StreamResponse:
        received = await self._receive(request, "gemini")
        key = request.headers.get("x-goog-api-key")
        if not key:
            return error(403, "error_permission_denied.json")
        if key != GEMINI_KEY or "Authorization" in request.headers:
            return error(400, "error_api_key_invalid.json")
        return await self._serve(request, received)

    async def _vertex(self, request: web.Request) -> web.StreamResponse:
        received = await self._receive(request, "vertex")
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ")
        valid = any(t.token == token and t.expires_at > time.time() for t in self.tokens)
        if not header.startswith("Bearer ") or not valid or "x-goog-api-key" in request.headers:
            return error(401, "error_unauthenticated.json")
        if (request.match_info["project"], request.match_info["location"]) != (PROJECT,
                                                                                LOCATION):
            return error(403, "error_permission_denied.json")
        return await self._serve(request, received)

    async def _receive(self, request: web.Request, api: str) -> Received:
        model, _, method = request.match_info["target"].partition(":")
        try:
            body = await request.json()
        except ValueError:
            body = None
        received = Received(api, model, method, request.query_string, dict(request.headers),
                            body)
        self.received.append(received)
        return received

    async def _token(self, request: web.Request) -> web.Response:
        """OAuth 2.0 JWT-bearer grant (RFC 7523), as Google's token endpoint takes it."""
        from google.auth import jwt

        form = parse_qs(await request.text())
        if form.get("grant_type") != [JWT_BEARER] or "assertion" not in form:
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        try:
            claims = jwt.decode(form["assertion"][0], certs=self.public_key_pem,
                                audience=TOKEN_AUDIENCE)
        except ValueError as exc:
            return web.json_response({"error": "invalid_grant",
                                      "error_description": f"Invalid JWT: {exc}"}, status=400)
        if claims.get("iss") != self.client_email or CLOUD_PLATFORM not in str(
                claims.get("scope", "")).split():
            return web.json_response({"error": "invalid_scope"}, status=400)
        token = f"ya29.fake-{len(self.tokens) + 1}-{int(time.time() * 1000)}"
        self.tokens.append(IssuedToken(token, time.time() + self.token_lifetime_s, claims))
        return web.json_response({"access_token": token, "expires_in": self.token_lifetime_s,
                                  "token_type": "Bearer"})

    # -- methods ---------------------------------------------------------------------

    async def _serve(self, request: web.Request, received: Received) -> web.StreamResponse:
        api, model, method, body = received.api, received.model, received.method, received.body
        if body is None:
            return error(400, body={"error": {"code": 400, "status": "INVALID_ARGUMENT",
                                              "message": "Invalid JSON payload received."}})
        if model not in MODELS:
            return error(404, "error_not_found.json")
        problem = self._problem(api, model, method, request, body)
        if problem:
            return error(400, body={"error": {"code": 400, "message": problem,
                                              "status": "INVALID_ARGUMENT"}})
        reply = self.script.popleft() if self.script else GoogleReply()
        if reply.status != 200:
            return web.json_response(reply.body, status=reply.status, headers=reply.headers)
        if method == "streamGenerateContent":
            return await self._stream(request, body, reply)
        answer = reply.body if reply.body is not None else golden(
            reply.golden or _default_golden(method, body))
        return web.json_response(answer, headers=reply.headers)

    def _problem(self, api: str, model: str, method: str, request: web.Request,
                 body: Any) -> str | None:
        if method in ("generateContent", "streamGenerateContent"):
            if method == "streamGenerateContent" and request.query.get("alt") != "sse":
                return "this fake streams only with alt=sse"
            return check_generate(body, model)
        if method == "countTokens":
            inner = dict(body.get("generateContentRequest") or {}) if api == "gemini" else body
            if api == "gemini" and inner.pop("model", None) != f"models/{model}":
                return "generateContentRequest.model must be the model of the URL"
            return check_generate(inner, model)
        if method in ("embedContent", "batchEmbedContents") and api == "gemini":
            return check_embed(body, model, batch=method == "batchEmbedContents")
        if method == "predict" and api == "vertex":
            return check_predict(body)
        return f"Method {method} is not served on this API"

    async def _stream(self, request: web.Request, body: Any,
                      reply: GoogleReply) -> web.StreamResponse:
        events = reply.events if reply.events is not None else sse_events(
            reply.golden or ("stream_parallel_calls.sse" if _wants_calls(body)
                             else "stream_text.sse"))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            for n, event in enumerate(events):
                if reply.drop_after == n:
                    assert request.transport is not None
                    request.transport.close()
                    return response
                await response.write(event)
                if reply.event_delay_s:
                    await asyncio.sleep(reply.event_delay_s)
        except (asyncio.CancelledError, ConnectionError):
            self.cancelled += 1
            raise
        await response.write_eof()
        return response


def _wants_calls(body: dict[str, Any]) -> bool:
    """Tools on offer and the last turn not already a function response."""
    last = body["contents"][-1]["parts"]
    return bool(body.get("tools")) and not any("functionResponse" in p for p in last)


def _default_golden(method: str, body: Any) -> str:
    if method == "generateContent":
        if (body.get("generationConfig") or {}).get("responseMimeType"):
            return "generate_json.json"
        return "generate_parallel_calls.json" if _wants_calls(body) else "generate_text.json"
    return {"embedContent": "embed_content.json", "batchEmbedContents":
            "batch_embed_contents.json", "predict": "vertex_predict.json",
            "countTokens": "count_tokens.json"}[method]


def error(status: int, name: str | None = None, body: Any = None) -> web.Response:
    return web.json_response(body if body is not None else golden(name or ""), status=status)


async def serve_fake_google(aiohttp_server: Any) -> FakeGoogle:
    fake = FakeGoogle()
    server = await aiohttp_server(fake.app())
    fake.base_url = str(server.make_url("")).rstrip("/")
    return fake
