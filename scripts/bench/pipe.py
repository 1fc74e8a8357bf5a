"""The benchmark's floor: a bare aiohttp pipe, bytes in and bytes out, no parsing.

Every POST, whatever its path, is forwarded as-is (body and Content-Type only) to
one upstream URL on a single shared `ClientSession`, and the upstream's answer is
streamed back chunk by chunk as it arrives.  No JSON, no SSE decoding, no auth, no
logging: whatever a gateway on aiohttp does beyond this is its own cost.

    python scripts/bench/pipe.py --port 8282 --upstream http://127.0.0.1:8181/v1/chat/completions
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

SESSION = web.AppKey("SESSION", aiohttp.ClientSession)
UPSTREAM = web.AppKey("UPSTREAM", str)


async def pipe(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
    async with request.app[SESSION].post(request.app[UPSTREAM], data=body, headers=headers) as up:
        resp = web.StreamResponse(status=up.status)
        resp.content_type = up.content_type
        if up.content_length is not None:
            resp.content_length = up.content_length
        await resp.prepare(request)
        async for chunk in up.content.iter_any():
            await resp.write(chunk)
        await resp.write_eof()
        return resp


async def _session(app: web.Application) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(limit=1000, limit_per_host=0)
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
    ) as session:
        app[SESSION] = session
        yield


def make_app(upstream: str) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream
    app.cleanup_ctx.append(_session)
    app.router.add_post("/{tail:.*}", pipe)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8282)
    parser.add_argument("--upstream", default="http://127.0.0.1:8181/v1/chat/completions")
    args = parser.parse_args()
    try:  # the same event loop the gateway picks, so the comparison stays fair
        import uvloop
    except ImportError:
        loop = None
    else:
        loop = uvloop.new_event_loop()
    web.run_app(
        make_app(args.upstream),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        **({"loop": loop} if loop else {}),
    )


if __name__ == "__main__":
    main()
