"""A fake Bedrock Runtime (Converse, ConverseStream, and InvokeModel for the text embedding
models of `fake_bedrock_embed.py`) over real HTTP, written from AWS's API reference:
rest-json answers, errors as `{"message"}` with `x-amzn-ErrorType`, streams in
the binary event-stream framing (`application/vnd.amazon.eventstream`, CRC32s).

Like AWS, it checks every request's auth before anything else: a SigV4 signature is
recomputed with botocore from the request as received (its raw path, the signed headers,
the body bytes) and the credentials the fake knows; a wrong one gets 403
InvalidSignatureException, an unknown key 403 UnrecognizedClientException. A bearer
token must be one of its API keys.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from bench.eventstream import event_frame, exception_frame
from tests.fake_bedrock_embed import invoke

DATA = Path(__file__).parent / "data" / "bedrock"
REGION = "us-east-1"
ACCESS_KEY = "AKIAFAKEBEDROCK00001"
SECRET_KEY = "fake/Secret+Key/for/the/bedrock/tests/0001"
TEMP_ACCESS_KEY = "ASIAFAKEBEDROCK00002"
TEMP_SECRET_KEY = "fake/Temporary+Secret/for/bedrock/0002"
SESSION_TOKEN = "FwoGZXIvYXdzEFAKE//session/token/for/the/bedrock/tests"
API_KEY = "ABSKQmVkcm9ja0FQSUtleS1mYWtlLWtleS1mb3ItdGVzdHM="
CLAUDE_ID = "anthropic.claude-3-5-sonnet-20240620-v1:0"
PROFILE_ARN = ("arn:aws:bedrock:us-east-1:123456789012:inference-profile/"
               "us.anthropic.claude-3-5-sonnet-20240620-v1:0")
_AUTH = re.compile(r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/"
                   r"(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request, "
                   r"SignedHeaders=(?P<signed>[^,]+), Signature=(?P<signature>[0-9a-f]{64})")
_CODERAL = ":http://internal.amazon.com/coral/com.amazon.bedrock/"


def golden(name: str) -> Any:
    return json.loads((DATA / name).read_text())


# --- the fake ---------------------------------------------------------------------------------

@dataclass
class Call:
    path: str  # raw, as received
    model: str  # the modelId, decoded
    headers: dict[str, str]
    body: dict[str, Any]
    auth: str  # "sigv4:<access key>" or "bearer"


@dataclass
class Reply:
    """What the fake does for one request (else the golden answer)."""

    status: int = 200
    error_type: str = ""  # e.g. ThrottlingException; with status >= 400
    message: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None  # a whole Converse answer
    events: list[dict[str, Any]] | None = None  # a stream's events ({"event", "data"})
    exception_after: int | None = None  # streams: an exception frame after N events ...
    exception: tuple[str, str] = ("modelStreamErrorException", "The model stream failed")
    stop_after: int | None = None  # streams: end the body cleanly after N events
    split: int = 0  # streams: write the frames in pieces of this many bytes
    delay_s: float | None = None  # InvokeModel: answer after this long (else invoke_delay_s)


class FakeBedrock:
    def __init__(self, *, region: str = REGION) -> None:
        self.region = region
        self.credentials = {ACCESS_KEY: (SECRET_KEY, None),
                            TEMP_ACCESS_KEY: (TEMP_SECRET_KEY, SESSION_TOKEN)}
        self.api_keys = {API_KEY}
        self.calls: list[Call] = []
        self.rejected: list[str] = []  # why requests were refused before being served
        self.script: deque[Reply] = deque()
        self.base_url = ""
        self.invoke_delay_s = 0.0  # InvokeModel: how long each call takes to answer
        self.in_flight = self.max_in_flight = 0  # InvokeModel calls being answered
        self.invoke_cancelled = 0  # InvokeModel calls dropped by the client before the answer

    def then(self, *replies: Reply) -> FakeBedrock:
        self.script.extend(replies)
        return self

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/model/{model_id:.+}/converse", self._converse)
        app.router.add_post("/model/{model_id:.+}/converse-stream", self._converse_stream)
        app.router.add_post("/model/{model_id:.+}/invoke", self._invoke)
        return app

    async def _receive(self, request: web.Request) -> tuple[Call | web.Response, Reply]:
        raw = await request.read()
        who = self._authenticate(request, raw)
        if isinstance(who, web.Response):
            return who, Reply()
        model = unquote(request.raw_path.split("/")[2])
        call = Call(request.raw_path, model, dict(request.headers), json.loads(raw), who)
        self.calls.append(call)
        reply = self.script.popleft() if self.script else Reply()
        if reply.status >= 400:
            return error(reply.status, reply.error_type, reply.message, reply.headers), reply
        return call, reply

    def _authenticate(self, request: web.Request, body: bytes) -> str | web.Response:
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            if header[len("Bearer "):] in self.api_keys:
                return "bearer"
            return self._refuse("UnrecognizedClientException", "Invalid API Key format")
        match = _AUTH.fullmatch(header)
        if match is None:
            return self._refuse("MissingAuthenticationTokenException",
                                "Missing Authentication Token")
        if match["service"] != "bedrock" or match["region"] != self.region:
            return self._refuse("InvalidSignatureException",
                                "Credential should be scoped to a valid region and service")
        known = self.credentials.get(match["key"])
        if known is None:
            return self._refuse("UnrecognizedClientException",
                                "The security token included in the request is invalid.")
        secret, token = known
        if token is not None and request.headers.get("X-Amz-Security-Token") != token:
            return self._refuse("UnrecognizedClientException",
                                "The security token included in the request is invalid.")
        problem = _signature_problem(request, body, match, Credentials(match["key"], secret,
                                                                       token), self.region)
        if problem:
            return self._refuse("InvalidSignatureException", problem)
        return f"sigv4:{match['key']}"

    def _refuse(self, kind: str, message: str) -> web.Response:
        self.rejected.append(kind)
        return error(403, kind, message)

    async def _converse(self, request: web.Request) -> web.Response:
        call, reply = await self._receive(request)
        if isinstance(call, web.Response):
            return call
        if reply.body is not None:
            return web.json_response(reply.body)
        return web.json_response(golden("converse_tool_use.json" if _wants_tool(call.body)
                                        else "converse_text.json"))

    async def _invoke(self, request: web.Request) -> web.Response:
        call, reply = await self._receive(request)
        if isinstance(call, web.Response):
            return call
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.invoke_delay_s if reply.delay_s is None else reply.delay_s)
        except asyncio.CancelledError:
            self.invoke_cancelled += 1
            raise
        finally:
            self.in_flight -= 1
        if reply.body is not None:
            return web.json_response(reply.body)
        answer = invoke(call.model, call.body)
        if isinstance(answer, tuple):
            return error(*answer)
        return web.json_response(answer, headers={"x-amzn-RequestId": "fake-invoke-request"})

    async def _converse_stream(self, request: web.Request) -> web.StreamResponse:
        call, reply = await self._receive(request)
        if isinstance(call, web.Response):
            return call
        events = reply.events if reply.events is not None else golden(
            "stream_tool_use.json" if _wants_tool(call.body) else "stream_text.json")
        frames = [event_frame(e["event"], e["data"]) for e in events]
        if reply.stop_after is not None:
            frames = frames[:reply.stop_after]
        if reply.exception_after is not None:
            frames = [*frames[:reply.exception_after], exception_frame(*reply.exception)]
        response = web.StreamResponse(headers={
            "Content-Type": "application/vnd.amazon.eventstream",
            "x-amzn-RequestId": "6b4ba1b4-fake-request-id"})
        await response.prepare(request)
        data = b"".join(frames)
        step = reply.split or len(data) or 1
        for start in range(0, len(data), step):
            await response.write(data[start:start + step])
            if reply.split:
                await asyncio.sleep(0)
        await response.write_eof()
        return response


def error(status: int, kind: str, message: str,
          headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"message": message}, status=status,
                             headers={"x-amzn-ErrorType": kind + _CODERAL, **(headers or {})})


def _wants_tool(body: dict[str, Any]) -> bool:
    """Answer with a tool call when tools are offered and the last turn is not a result."""
    if not body.get("toolConfig"):
        return False
    last = body["messages"][-1]["content"]
    return not any("toolResult" in block for block in last)


def _signature_problem(request: web.Request, body: bytes, match: re.Match[str],
                       credentials: Credentials, region: str) -> str | None:
    """Recompute the signature with botocore from the request as received."""
    signed = match["signed"].split(";")
    if "host" not in signed or "x-amz-date" not in signed:
        return "host and x-amz-date must be signed"
    amz_date = request.headers.get("X-Amz-Date", "")
    try:
        when = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return "X-Amz-Date is missing or malformed"
    if abs((dt.datetime.now(dt.UTC) - when).total_seconds()) > 300:
        return "Signature expired"
    headers = {name: request.headers.get(name, "") for name in signed}
    aws = AWSRequest(method=request.method, url=f"http://{request.host}{request.raw_path}",
                     data=body, headers=headers)
    aws.context["timestamp"] = amz_date
    signer = SigV4Auth(credentials, "bedrock", region)
    canonical = signer.canonical_request(aws)
    expected = signer.signature(signer.string_to_sign(aws, canonical), aws)
    if expected != match["signature"]:
        return ("The request signature we calculated does not match the signature you "
                "provided. Check your AWS Secret Access Key and signing method.")
    return None


async def serve_fake_bedrock(aiohttp_server: Any, **options: Any) -> FakeBedrock:
    fake = FakeBedrock(**options)
    server = await aiohttp_server(fake.app())
    fake.base_url = str(server.make_url("")).rstrip("/")
    return fake


def bedrock_provider(fake: FakeBedrock, **extra: Any) -> dict[str, Any]:
    """A kind bedrock provider pointed at the fake, with explicit long-term keys unless
    `extra` says otherwise (None removes a field)."""
    provider = {"kind": "bedrock", "region": fake.region, "base_url": fake.base_url,
                "aws_access_key_id": ACCESS_KEY, "aws_secret_access_key": SECRET_KEY, **extra}
    return {name: value for name, value in provider.items() if value is not None}


def isolate_aws_environment(monkeypatch: Any, home: Path) -> None:
    """No AWS credentials anywhere the chain looks (environment, shared files, instance
    metadata) unless the test puts some there."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(home / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("BOTO_CONFIG", str(home / "boto-config"))
