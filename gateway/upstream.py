"""The one place that talks to providers over HTTP.

`open_upstream` posts an `UpstreamRequest` on the shared `ClientSession`, turns a
non-2xx answer into the adapter's `GatewayError` before any byte reaches the
client, and maps aiohttp's failures: cannot connect -> 502, timeout -> 504.  Only
this module catches `aiohttp.ClientError`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import NamedTuple

import aiohttp

from gateway.config import Provider, Timeouts
from gateway.errors import GatewayError, UpstreamError, UpstreamTimeout
from gateway.providers.base import Adapter, UpstreamRequest

log = logging.getLogger(__name__)

_MAX_ERROR_BODY = 1024 * 1024


def new_session() -> aiohttp.ClientSession:
    """The process-wide upstream session: a large keep-alive pool, no default timeout
    (each call sets its own), no cookie jar, TCP_NODELAY (aiohttp's default)."""
    connector = aiohttp.TCPConnector(limit=1000, limit_per_host=0, ttl_dns_cache=300, enable_cleanup_closed=True)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=True,
        read_bufsize=2**16,
    )


@functools.cache
def _client_timeout(t: Timeouts, stream: bool) -> aiohttp.ClientTimeout:
    """One ClientTimeout per provider setting (building one per call showed in the profile)."""
    return aiohttp.ClientTimeout(total=None if stream else t.total, sock_connect=t.connect, sock_read=t.read)


class Opened(NamedTuple):
    resp: aiohttp.ClientResponse
    first: bytes  # a stream's first bytes (b"" for a whole answer, still unread)


@asynccontextmanager
async def open_upstream(
    session: aiohttp.ClientSession, adapter: Adapter, req: UpstreamRequest, *, stream: bool
) -> AsyncIterator[Opened]:
    """POST `req`; yield the 2xx response, with a stream's first bytes already read.

    `first_byte` bounds the wait for the headers and, for a stream, its first bytes,
    in one timer (a second one per stream showed in the profile).  Failures until
    then are `retryable` (nothing has reached the client); the rest are final."""
    provider = adapter.provider
    t = provider.timeouts
    answered = False
    try:
        async with asyncio.timeout(t.first_byte):
            resp = await session.post(req.url, data=req.body, headers=req.headers, timeout=_client_timeout(t, stream))
            try:
                first = await resp.content.readany() if stream and resp.status < 300 else b""
            except BaseException:
                resp.close()
                raise
        answered = True
        try:
            if resp.status >= 300:
                body = await resp.content.read(_MAX_ERROR_BODY)
                log.debug("upstream %s answered HTTP %d", provider.name, resp.status)  # the caller logs it
                raise adapter.error(resp.status, body, resp.headers)
            yield Opened(resp, first)
        except BaseException:
            resp.close()  # an unfinished answer: drop the connection, never reuse it
            raise
        else:
            resp.release()
    except GatewayError:
        raise
    except (TimeoutError, aiohttp.ServerTimeoutError):
        raise UpstreamTimeout(f"The {provider.name} provider did not answer in time.", retryable=not answered) from None
    except aiohttp.ClientConnectorError:
        raise UpstreamError(
            f"Could not connect to the {provider.name} provider.", code="upstream_unreachable", retryable=True
        ) from None
    except aiohttp.ClientPayloadError:
        raise UpstreamError(
            f"The {provider.name} provider closed the connection mid-answer.", code="upstream_stream_truncated"
        ) from None
    except aiohttp.ClientError as exc:
        log.debug("upstream %s failed: %s", provider.name, type(exc).__name__)
        raise UpstreamError(f"The connection to the {provider.name} provider failed.", retryable=not answered) from None


async def read_capped(resp: aiohttp.ClientResponse, provider: Provider, limit: int) -> bytes:
    """A whole (decoded) answer body, refused past `limit` bytes: a small gzip body can
    inflate to gigabytes.  aiohttp inflates in bounded steps, so memory stays near
    `limit` whatever the ratio."""
    parts: list[bytes] = []
    size = 0
    async for part in resp.content.iter_any():
        size += len(part)
        if size > limit:
            raise UpstreamError(
                f"The {provider.name} provider's answer is larger than this gateway accepts "
                f"({limit} bytes decoded, server.max_upstream_body_bytes).",
                code="upstream_body_too_large",
            )
        parts.append(part)
    return b"".join(parts)
