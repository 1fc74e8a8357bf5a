"""The walk every API call takes after its body is read, whatever the dialect:
resolve the model (404 / 403), admit it against the key's limits (429), then try the
model's deployments in plan order, with retries and fallback before the first byte,
and settle the tokens (the real usage, or an estimate when none came) at the end.

The attempt itself (an adapter request, the upstream call, the answer relayed) is
the caller's `attempt(target)`; see gateway/relay.py for the upstream side."""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway import limits
from gateway.appkeys import CALLER, LIMITER, RATE_HEADERS, RECORD, REPLY, REQUEST_ID, RUNTIME
from gateway.balancer import Target
from gateway.config import Limits
from gateway.errors import GatewayError, RateLimited
from gateway.routing import resolve
from gateway.usage import CLIENT_CLOSED, UsageRecord

log = logging.getLogger(__name__)

_CODE = re.compile(r"^[a-z0-9_.]{1,64}$")


async def with_fallback(
    request: web.Request,
    attempt: Callable[[Target], Awaitable[web.StreamResponse]],
    estimate: Callable[[], int],
) -> web.StreamResponse:
    """Run `attempt` on the model's targets in plan order until one answers.

    Only `retryable` failures move on (connection errors, timeouts before the first
    byte, 429, 5xx, overload), and never once the client has received a byte: a
    streaming attempt turns its own late failures into a final error event."""
    runtime, record = request[RUNTIME], request[RECORD]
    model = resolve(runtime.config, request[CALLER], record.model or "")  # 404 / 403
    admission = await _admit(request, estimate)  # 429 before any upstream call
    plan = runtime.balancer.plan(model.id)
    routing = runtime.config.routing
    tried: list[str] = []
    called = False  # an upstream received the prompt: from then on, it may bill us
    try:
        for i in range(routing.attempts):
            target = plan[i % len(plan)]
            record.provider, record.upstream_model = target.route.provider.name, target.route.model.upstream
            try:
                if target.adapter is None:
                    raise GatewayError(
                        f"Provider kind '{target.route.provider.kind}' is not supported.", status=501,
                        code="not_implemented",
                    )  # fmt: skip
                if not target.route.provider.api_key:
                    log.warning(
                        "provider %s has no API key: set the environment variable %s and reload",
                        target.route.provider.name, target.route.provider.api_key_env or "named in its api_key",
                    )  # fmt: skip
                    raise target.adapter.missing_key_error()
                async with runtime.balancer.slot(target):
                    called = True
                    response = await attempt(target)
            except GatewayError as exc:
                exc.redact(target.route.provider.api_keys)  # an upstream may echo its key in any field
                tried.append(f"{target.label}={exc.status}")
                if exc.status >= 500 or exc.status == 429:
                    log_upstream_failure(request, target, exc.status, exc.code or exc.type)
                nxt = plan[(i + 1) % len(plan)]
                unconfigured = exc.code == "provider_not_configured"  # try another deployment, if any
                if exc.retryable:
                    runtime.balancer.failed(target, _retry_after(exc))
                delay = _retry_delay(exc, i, target, nxt, routing.backoff)
                may_retry = exc.retryable or (unconfigured and nxt.label != target.label)
                if not may_retry or i + 1 >= routing.attempts or delay > routing.max_retry_after:
                    raise
                await asyncio.sleep(delay)
                continue
            failed_late = record.status >= 500 and record.status != CLIENT_CLOSED
            tried.append(f"{target.label}={record.status or response.status}")
            if failed_late:
                runtime.balancer.failed(target)
            else:
                runtime.balancer.succeeded(target)
            return response
        raise AssertionError("routing.attempts is at least 1")
    except asyncio.CancelledError:
        if not record.status:
            record.status, record.error_code = CLIENT_CLOSED, "client_closed"
        raise
    finally:
        record.attempts = " ".join(tried) or None
        if (reply := request.get(REPLY)) is not None:
            record.upstream_id = reply.upstream_id
        if called:
            _charge_unreported_usage(request, record, estimate)
        if admission is not None:  # the real usage (or its estimate) replaces the admission's
            # shielded: a client hanging up while a Redis release is in flight must not
            # cancel it (the slot would wait for its lease, the month keep the estimate)
            await asyncio.shield(request.app[LIMITER].release(admission, record.total_tokens))


def _charge_unreported_usage(request: web.Request, record: UsageRecord, estimate: Callable[[], int]) -> None:
    """When the upstream worked but its usage never reached us (the client hung up
    before the usage chunk, the stream was cut, the upstream reports none), charge an
    estimate: the prompt's, plus the answer text relayed so far, by the same
    characters / 4 rule.  Never 0 and never a refund, or hanging up would be free.
    An upstream that refused the request before answering (ttfb unset) is not charged."""
    answered = record.ttfb_ms is not None
    if record.completion_tokens or not (answered or record.status == CLIENT_CLOSED):
        return
    reply = request.get(REPLY)
    completion = limits.estimate_text_tokens(reply.relayed_chars if reply is not None else 0)
    if record.total_tokens and not completion:
        return  # the real usage came (an empty answer), nothing was relayed
    prompt = record.prompt_tokens or estimate()
    record.prompt_tokens, record.completion_tokens = prompt, completion
    record.total_tokens = prompt + completion
    record.tokens_estimated = True


def log_upstream_failure(request: web.Request, target: Target, status: int, cause: str | None) -> None:
    """One WARNING per failed upstream attempt: who, where, what; never a key or prompt
    (the cause is an error code, never the upstream's message, which may quote the
    prompt; an upstream's own code is logged only when it looks like one)."""
    fields = {
        "request_id": request.get(REQUEST_ID), "provider": target.route.provider.name, "deployment": target.label,
        "status": status, "cause": cause if cause and _CODE.match(cause) else "-",
    }  # fmt: skip
    # the same facts as fields, for `--log-format json`
    log.warning(
        "upstream failure: request_id=%(request_id)s provider=%(provider)s deployment=%(deployment)s "
        "status=%(status)d cause=%(cause)s", fields, extra=fields,
    )  # fmt: skip


# -- tier limits -------------------------------------------------------------------------

_NO_LIMITS = Limits()


async def _admit(request: web.Request, estimate: Callable[[], int]) -> limits.Admission | None:
    """Count the request against its key's limits, or refuse it with a 429.  The token
    estimate walks the whole prompt, so it is made only for keys with limits."""
    key = request[CALLER].key
    if key.limits == _NO_LIMITS:
        return None
    admission = await request.app[LIMITER].admit(key.name, key.limits, estimate())
    request[RATE_HEADERS] = limits.rate_headers(admission)
    if admission.rejected is not None:
        raise _refusal(admission)
    return admission


def _refusal(adm: limits.Admission) -> RateLimited:
    lim = adm.limits
    headers: dict[str, str] = {}
    if adm.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(adm.retry_after)))
        headers["retry-after-ms"] = str(max(1, math.ceil(adm.retry_after * 1000)))
    if adm.rejected == limits.QUOTA:
        headers["x-should-retry"] = "false"  # the official SDKs do not retry this one
        return RateLimited(
            f"You exceeded your monthly token quota ({lim.tokens_per_month} tokens; {adm.remaining_month} left, "
            f"about {adm.estimate} needed). It renews on the 1st of next month (UTC); upgrade your plan for more.",
            type="insufficient_quota",
            code="insufficient_quota",
            headers=headers,
        )
    if adm.rejected == limits.TOO_LARGE:
        headers["x-should-retry"] = "false"
        message = (
            f"Request too large: about {adm.estimate} tokens, over your limit of {lim.tpm} tokens per minute. "
            "Send a shorter prompt."
        )
    elif adm.rejected == limits.CONCURRENCY:
        message = f"Rate limit reached: {lim.concurrency} requests in flight at once. Retry when one has finished."
    elif adm.rejected == limits.RPM:
        message = f"Rate limit reached: {lim.rpm} requests per minute. Please try again in {adm.retry_after:.3f}s."
    else:
        message = (
            f"Rate limit reached: {lim.tpm} tokens per minute; {adm.remaining_tokens} left, about {adm.estimate} "
            f"requested. Please try again in {adm.retry_after:.3f}s."
        )
    return RateLimited(message, type="rate_limit_exceeded", code="rate_limit_exceeded", headers=headers)


async def rate_limit_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every answer to a limited key, streamed or not, success
    or 429, carries OpenAI's x-ratelimit-* headers (a stream's at its first byte)."""
    headers = request.get(RATE_HEADERS)
    if headers:
        response.headers.update(headers)


def _retry_after(exc: GatewayError) -> float | None:
    value = exc.headers.get("Retry-After")
    try:
        return float(value) if value else None
    except ValueError:
        return None  # an HTTP date: rare from APIs; treat as unknown


def _retry_delay(exc: GatewayError, attempt: int, target: Target, nxt: Target, backoff: float) -> float:
    """No wait before trying a different target; before trying the same one again,
    exponential backoff, or the upstream's Retry-After when it asks for longer."""
    if nxt.label != target.label:
        return 0.0
    return max(backoff * 2**attempt, _retry_after(exc) or 0.0)
