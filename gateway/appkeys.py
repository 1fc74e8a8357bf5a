"""Every typed key for application and request state, in one place (UPPER_CASE, so
no function can shadow one)."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from gateway.config import Config
from gateway.providers.base import Adapter
from gateway.routing import Caller
from gateway.usage import UsageRecord, UsageStore

CONFIG = web.AppKey("CONFIG", Config)
HTTP = web.AppKey("HTTP", aiohttp.ClientSession)
USAGE = web.AppKey("USAGE", UsageStore)
ADAPTERS = web.AppKey("ADAPTERS", dict[str, Adapter])  # by provider name, built once per config

CALLER = web.RequestKey("CALLER", Caller)
RECORD = web.RequestKey("RECORD", UsageRecord)
REQUEST_ID = web.RequestKey("REQUEST_ID", str)
