"""Errors, always answered in OpenAI's shape: {"error": {message, type, param, code}}.

    GatewayError                 status 500, server_error (also: any unexpected bug)
      InvalidRequest             400 invalid_request_error, `param` names the field
      AuthenticationFailed       401 invalid_api_key
      PermissionDenied           403 permission_error (model outside the caller's tier)
      NotFound                   404 model_not_found
      RateLimited                429 (Retry-After)
      UpstreamError              502 the provider failed or answered nonsense
      ServiceUnavailable         503 (Retry-After where known)
      UpstreamTimeout            504

An error carries everything needed to answer: its status, its OpenAI `type` and
`code`, extra headers.  Messages are written for the API caller and never contain
keys, upstream URLs or prompt text.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, ClassVar

import orjson
from aiohttp import web

log = logging.getLogger(__name__)

_MAX_TEXT = {"message": 8192, "type": 128, "code": 128, "param": 256}  # characters kept of an upstream's field


class GatewayError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        type: str | None = None,
        headers: Mapping[str, str] | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable  # another attempt (key, deployment) may succeed
        self.message = message
        self.param = param
        self.status = status or self.status
        self.type = type or self.type
        self.code = code if code is not None else self.code
        self.headers = dict(headers or {})

    def redact(self, secrets: Iterable[str]) -> None:
        """Remove every secret from each text field a client or a log line may see, and
        cap their length: an upstream may echo its key, or anything, in any field."""
        for name in ("message", "type", "code", "param"):
            value = getattr(self, name)
            if not isinstance(value, str):
                continue
            for secret in secrets:
                if secret and secret in value:
                    value = value.replace(secret, "[redacted]")
            setattr(self, name, value if len(value) <= _MAX_TEXT[name] else value[: _MAX_TEXT[name]] + "...")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> web.Response:
        return web.Response(
            status=self.status,
            body=orjson.dumps(self.body()),
            content_type="application/json",
            headers=self.headers,
        )


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_error"
    code = "model_not_allowed"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class UpstreamError(GatewayError):
    status = 502
    type = "server_error"
    code = "upstream_error"


class ServiceUnavailable(GatewayError):
    status = 503
    type = "server_error"
    code = "service_unavailable"


class UpstreamTimeout(GatewayError):
    status = 504
    type = "server_error"
    code = "timeout"


_HTTP_TYPES = {401: "invalid_request_error", 403: "permission_error", 404: "invalid_request_error"}


def from_http_exception(exc: web.HTTPException) -> GatewayError:
    """aiohttp's own 404/405/413... as an OpenAI-shaped error."""
    status = exc.status
    if status == 413:
        message = "Request body too large."
        code = "request_too_large"
    elif status == 404:
        message = "Unknown URL; this gateway serves /v1/models, /v1/chat/completions and /v1/embeddings."
        code = "unknown_url"
    elif status == 405:
        message = f"Method not allowed: {exc.reason}."
        code = "method_not_allowed"
    else:
        message = exc.reason
        code = None
    err_type = _HTTP_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
    return GatewayError(message, status=status, type=err_type, code=code, headers=headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into an error response in the caller's dialect (OpenAI's
    shape, or Anthropic's for Messages clients); log bugs, never leak them."""
    try:
        return await handler(request)
    except GatewayError as exc:
        return _respond(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _respond(request, from_http_exception(exc))
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _respond(request, GatewayError("The gateway hit an internal error; it has been logged."))


def anthropic_client(request: web.Request) -> bool:
    """A Messages client: on the Messages endpoints, or any call that carries
    `anthropic-version` (Anthropic's SDKs send it on every request, `/v1/models` too)."""
    return request.path.startswith("/v1/messages") or "anthropic-version" in request.headers


def _respond(request: web.Request, exc: GatewayError) -> web.Response:
    if not anthropic_client(request):
        return exc.response()
    from gateway.dialects.messages.render import render_error  # the dialect imports this module

    status, body = render_error(exc)
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=exc.headers)
