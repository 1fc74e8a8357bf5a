"""`create_app(config)`: routes, middlewares and the lifetimes of the shared upstream
session and the usage store.  The only wiring in the package."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from gateway import handlers, handlers_messages, handlers_responses
from gateway.accounting import accounting_middleware, echo_request_id
from gateway.appkeys import HTTP, LIMITER, LIVE, METRICS, RESPONSES, STOPPING, USAGE
from gateway.auth import auth_middleware
from gateway.config import Config, is_postgres
from gateway.dashboard import dashboard_app
from gateway.dialects.responses.store import ResponseStore, open_response_store
from gateway.errors import error_middleware
from gateway.limits import Limiter, load_month_usage
from gateway.metrics import Metrics
from gateway.pipeline import rate_limit_headers
from gateway.runtime import Live, Runtime
from gateway.state_redis import limiter_for, shared_state
from gateway.upstream import new_session
from gateway.usage import UsageStore

log = logging.getLogger(__name__)


def create_app(config: Config, path: str | None = None, limiter: Limiter | None = None) -> web.Application:
    """The gateway for `config`; `path` is the file a reload (SIGHUP) reads again;
    `limiter` holds the tier-limit counters (in this process unless given)."""
    # error handling outermost, so the usage record and auth both see GatewayErrors
    app = web.Application(
        middlewares=[error_middleware, accounting_middleware, auth_middleware],
        client_max_size=config.max_body_bytes,
    )
    app[LIVE] = Live(Runtime.build(config), path)
    app[LIMITER] = limiter or limiter_for(config.state)  # state.redis: shared by every process
    app[METRICS] = Metrics()
    app[STOPPING] = asyncio.Event()
    app.cleanup_ctx.append(_upstream_session)
    app.cleanup_ctx.append(_shared_state)  # before the usage log, which seeds the monthly quota
    app.cleanup_ctx.append(_usage_store)
    app.cleanup_ctx.append(_response_store)  # after the usage log, which creates the database
    app.on_response_prepare.append(echo_request_id)
    app.on_response_prepare.append(rate_limit_headers)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/metrics", handlers.metrics)
    app.router.add_get("/v1/models", handlers.list_models)
    app.router.add_get("/v1/models/{model:.+}", handlers.get_model)
    app.router.add_post("/v1/chat/completions", handlers.chat_completions)
    app.router.add_post("/v1/embeddings", handlers.embeddings)
    app.router.add_post("/v1/messages", handlers_messages.create)
    app.router.add_post("/v1/messages/count_tokens", handlers_messages.count_tokens)
    responses = handlers_responses
    app.router.add_post("/v1/responses", responses.create)
    app.router.add_post("/v1/responses/input_tokens", responses.input_tokens)
    app.router.add_get("/v1/responses/{response_id}", responses.retrieve)
    app.router.add_delete("/v1/responses/{response_id}", responses.delete)
    app.router.add_post("/v1/responses/{response_id}/cancel", responses.cancel)
    app.router.add_get("/v1/responses/{response_id}/input_items", responses.list_input_items)
    app.add_subapp("/dashboard", dashboard_app(config.metrics_key_sha256))  # web pages: gateway/dashboard/
    return app


async def _upstream_session(app: web.Application) -> AsyncIterator[None]:
    async with new_session() as session:
        app[HTTP] = session
        yield


async def _shared_state(app: web.Application) -> AsyncIterator[None]:
    """With state.redis: the Redis limiter's lease renewal and the shared cool-downs
    (a no-op otherwise); a Redis that lost its data is re-seeded from the usage log."""
    live = app[LIVE]
    async with shared_state(app[LIMITER], lambda: live.current.balancer,
                            lambda: load_month_usage(live.current.config.database)):  # fmt: skip
        yield


async def _usage_store(app: web.Application) -> AsyncIterator[None]:
    config = app[LIVE].current.config
    if is_postgres(config.database):
        from gateway.usage_postgres import DEFAULT_SPILL_DIR, PostgresSink  # asyncpg only when used

        # a URL has no directory to spill beside: `usage_spill_dir` (config/ decides its default)
        spill_dir = config.usage_spill_dir or DEFAULT_SPILL_DIR
        store = await UsageStore.start(await PostgresSink.open(config.database, spill_dir=spill_dir))
    else:
        store = await UsageStore.open(config.database)
    app[USAGE] = store
    app[METRICS].watch(store.stats, app[LIMITER])  # read at each snapshot and scrape, not per request
    # the monthly quota survives restarts: this month's tokens per key, from the log
    try:
        await app[LIMITER].seed_month(await load_month_usage(config.database))
    except BaseException:
        await store.close()  # the start fails: queued rows (replayed spills) are not left behind
        raise
    yield
    await store.close()  # flushes every queued row


_PURGE_EVERY = 3600.0  # seconds between sweeps of expired stored responses (reads already hide them)


async def _response_store(app: web.Application) -> AsyncIterator[None]:
    config = app[LIVE].current.config
    store = app[RESPONSES] = await open_response_store(config.database, config.responses_ttl_seconds)
    purging = asyncio.create_task(_purge(store), name="responses-purge")
    yield
    purging.cancel()
    await store.close()


async def _purge(store: ResponseStore) -> None:
    while True:
        await asyncio.sleep(_PURGE_EVERY)
        try:
            await store.purge_expired()
        except Exception:  # a failed sweep is retried at the next one; reads hide expired rows anyway
            log.warning("response store: purge of expired responses failed", exc_info=True)
