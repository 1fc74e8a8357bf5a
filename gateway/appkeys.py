"""Every typed key for application and request state, in one place (UPPER_CASE, so
no function can shadow one)."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from gateway.dialects.responses.store import ResponseStore
from gateway.limits import Limiter
from gateway.metrics import Metrics
from gateway.providers.base import Reply
from gateway.routing import Caller
from gateway.runtime import Live, Runtime
from gateway.usage import UsageRecord, UsageStore

LIVE = web.AppKey("LIVE", Live)  # the configuration in force; swapped on reload
HTTP = web.AppKey("HTTP", aiohttp.ClientSession)
USAGE = web.AppKey("USAGE", UsageStore)
LIMITER = web.AppKey("LIMITER", Limiter)  # tier capacity counters; survive reloads
METRICS = web.AppKey("METRICS", Metrics)
RESPONSES = web.AppKey("RESPONSES", ResponseStore)  # stored Responses (`store: true`)
# set when a graceful stop has run out of time: handlers still streaming end their
# stream with a final `server_shutting_down` error event before they are cancelled
STOPPING = web.AppKey("STOPPING", asyncio.Event)

RUNTIME = web.RequestKey("RUNTIME", Runtime)  # the configuration this request started with
CALLER = web.RequestKey("CALLER", Caller)
RECORD = web.RequestKey("RECORD", UsageRecord)
REQUEST_ID = web.RequestKey("REQUEST_ID", str)
RATE_HEADERS = web.RequestKey("RATE_HEADERS", dict)  # x-ratelimit-* for this request's answer
REPLY = web.RequestKey("REPLY", Reply)  # the answer being built: what it relayed, when no usage comes
