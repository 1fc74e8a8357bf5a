"""Key authentication: `Authorization: Bearer <key>`, or Anthropic's `x-api-key`.
Keys are known only by their sha256; the presented key is hashed and looked up,
so no key is ever held or compared in clear text."""

from __future__ import annotations

import hmac

from aiohttp import web

from gateway.appkeys import CALLER, LIVE, RUNTIME
from gateway.config import hash_key
from gateway.errors import AuthenticationFailed, Handler
from gateway.routing import Caller

_PUBLIC = frozenset({"/healthz"})


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in _PUBLIC or not request.path.startswith("/v1/"):
        return await handler(request)
    runtime = request[RUNTIME] = request.app[LIVE].current
    config = runtime.config
    header = request.headers.get("Authorization")
    if header is None:  # Anthropic's SDKs send the key as `x-api-key`
        scheme, presented = "bearer", request.headers.get("x-api-key", "").strip()
    else:
        scheme, _, presented = header.partition(" ")
        presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        raise AuthenticationFailed(
            "Missing API key: send it as 'Authorization: Bearer <key>' (or 'x-api-key: <key>').",
            code="invalid_api_key",
        )
    try:
        digest = hash_key(presented)
    except UnicodeEncodeError:  # aiohttp keeps a non-UTF-8 header byte as a lone surrogate: no key has one
        raise AuthenticationFailed("Incorrect API key provided.") from None
    key = config.keys.get(digest)
    # compare_digest keeps the final check constant-time even though the dict lookup is not
    if key is None or not hmac.compare_digest(key.key_sha256, digest):
        raise AuthenticationFailed("Incorrect API key provided.")
    request[CALLER] = Caller(key=key, tier=config.tiers[key.tier])
    return await handler(request)
