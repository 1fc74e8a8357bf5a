"""The dashboard's HTTP handlers: sign-in and sign-out, the key holder's page, the
operator's page, the style sheet; and the security headers every answer carries.

Who sees what: a session is either a key holder's (role HOLDER, their key's name) or
the operator's (the admin key).  The key holder's page takes the key name from the
session only, never from the request, so no parameter can show another key's rows;
the operator pages answer 403 to a key holder's session."""

from __future__ import annotations

import hmac
import logging
import math
import sqlite3
import time
from typing import Final

from aiohttp import web

from gateway.appkeys import LIMITER, LIVE
from gateway.config import ApiKey, hash_key
from gateway.dashboard import holder, operator
from gateway.dashboard.html import STYLE, layout, message_page, signin_page
from gateway.dashboard.queries import DAY, UsageReader
from gateway.dashboard.sessions import (
    COOKIE,
    HOLDER,
    OPERATOR,
    PRE_COOKIE,
    PRE_TTL,
    SESSION_TTL,
    Session,
    Sessions,
    SignInThrottle,
    clear_cookie,
    set_cookie,
)  # fmt: skip
from gateway.usage_record import UsageLogError

log = logging.getLogger(__name__)

SESSIONS: Final = web.AppKey("DASHBOARD_SESSIONS", Sessions)
THROTTLE: Final = web.AppKey("DASHBOARD_THROTTLE", SignInThrottle)
MAX_FORM: Final = 4096  # bytes: a sign-in or sign-out form is tiny

# no script at all; styles only from our own sheet; nothing may frame the pages
CSP: Final = ("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
              "frame-ancestors 'none'; base-uri 'none'")  # fmt: skip
HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}


@web.middleware
async def security_headers(request: web.Request, handler: web.RequestHandler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # the dashboard's own 404/405: an HTML page, not the API's JSON
        response = _page(message_page(exc.reason, "There is no such dashboard page."), exc.status)
    response.headers.update(HEADERS)
    return response


def _page(html: str, status: int = 200) -> web.Response:
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _sessions(request: web.Request) -> Sessions:
    sessions = request.app[SESSIONS]
    sessions.follow(request.config_dict[LIVE].current.config.metrics_key_sha256)  # a reload may change it
    return sessions


def _key_by_name(request: web.Request, name: str) -> ApiKey | None:
    for key in request.config_dict[LIVE].current.config.keys.values():
        if key.name == name:
            return key
    return None


def current(request: web.Request) -> Session | None:
    """The request's session, still valid under the configuration in force: a key
    holder's key must still exist and be the one signed in with; an operator session
    needs an admin key (its cookie is signed with a secret derived from it)."""
    sessions = _sessions(request)
    session = sessions.verify(request.cookies.get(COOKIE))
    if session is None:
        return None
    if session.role == OPERATOR:
        return session if request.config_dict[LIVE].current.config.metrics_key_sha256 else None
    key = _key_by_name(request, session.name)
    if session.role != HOLDER or key is None or sessions.bind(key.key_sha256) != session.bind:
        return None
    return session


async def _form(request: web.Request) -> dict[str, str] | None:
    if request.content_length is None or request.content_length > MAX_FORM:
        return None
    form = await request.post()
    return {k: v for k, v in form.items() if isinstance(v, str)}


# -- sign-in and sign-out -------------------------------------------------------------------


async def index(request: web.Request) -> web.Response:
    session = current(request)
    if session is None:
        return await signin_form(request)
    return _redirect("/dashboard/ops" if session.role == OPERATOR else "/dashboard/me")


async def signin_form(request: web.Request, error: str | None = None, status: int = 200) -> web.Response:
    sessions = _sessions(request)
    nonce, new = sessions.pre_session(request)
    operator_on = request.config_dict[LIVE].current.config.metrics_key_sha256 is not None
    response = _page(signin_page(sessions.csrf("signin:" + nonce), error=error, operator_on=operator_on), status)
    if new:
        set_cookie(response, request, PRE_COOKIE, nonce, PRE_TTL)
    return response


async def signin(request: web.Request) -> web.Response:
    wait = request.app[THROTTLE].allow(request.remote or "?")
    if wait is not None:
        response = _page(message_page("Too many sign-in attempts", "Wait a minute and try again."), 429)
        response.headers["Retry-After"] = str(math.ceil(wait))
        return response
    sessions = _sessions(request)
    form = await _form(request)
    nonce = request.cookies.get(PRE_COOKIE, "")
    if form is None or not nonce or not sessions.csrf_ok("signin:" + nonce, form.get("csrf")):
        return _page(message_page("Refused", "The form was not sent from this dashboard (CSRF check)."), 403)
    presented = form.get("key", "").strip()
    config = request.config_dict[LIVE].current.config
    try:
        digest = hash_key(presented)
    except UnicodeEncodeError:
        digest = ""
    # constant-time comparisons, as the API's
    if config.metrics_key_sha256 is not None and presented and hmac.compare_digest(digest, config.metrics_key_sha256):
        _, cookie = sessions.issue(OPERATOR, "operator")
        target = "/dashboard/ops"
    else:
        key = config.keys.get(digest) if presented else None
        if key is None or not hmac.compare_digest(key.key_sha256, digest):
            return await signin_form(request, error="That key is not valid here.", status=401)
        _, cookie = sessions.issue(HOLDER, key.name, sessions.bind(key.key_sha256))
        target = "/dashboard/me"
    response = _redirect(target)
    set_cookie(response, request, COOKIE, cookie, SESSION_TTL)
    clear_cookie(response, request, PRE_COOKIE)
    return response


async def signout(request: web.Request) -> web.Response:
    session = current(request)
    form = await _form(request)
    if session is None:
        return _redirect("/dashboard/")
    if form is None or not _sessions(request).csrf_ok(session.sid, form.get("csrf")):
        return _page(message_page("Refused", "The form was not sent from this dashboard (CSRF check)."), 403)
    _sessions(request).revoke(session)
    response = _redirect("/dashboard/")
    clear_cookie(response, request, COOKIE)
    return response


# -- the pages --------------------------------------------------------------------------------


def _unavailable(exc: BaseException) -> web.Response:
    log.warning("dashboard: the usage log cannot be read: %s", exc)
    return _page(message_page("Usage log unavailable", "The usage log cannot be read right now; try again."), 503)


async def key_page(request: web.Request) -> web.Response:
    session = current(request)
    if session is None:
        return _redirect("/dashboard/")
    if session.role != HOLDER:
        return _redirect("/dashboard/ops")
    runtime = request.config_dict[LIVE].current
    key = _key_by_name(request, session.name)
    assert key is not None  # current() checked it
    period = request.query.get("period", holder.DEFAULT_DAYS)
    days = holder.DAYS.get(period) or holder.DAYS[period := holder.DEFAULT_DAYS]
    now = time.time()
    end_day = int(now // DAY)
    start_day = end_day - days + 1
    cursor = _cursor(request.query.get("before"))
    try:
        data = await UsageReader(runtime.config.database).holder(key.name, start_day * DAY, now + 1, cursor)
    except (UsageLogError, sqlite3.Error) as exc:
        return _unavailable(exc)
    peek, note = None, ""
    limiter = request.config_dict[LIMITER]
    try:
        peek = await limiter.peek(key.name, key.limits)
    except Exception as exc:  # Redis down: the page still shows the rest
        note = "The live counters cannot be read right now."
        log.warning("dashboard: limiter counters unreadable: %s", type(exc).__name__)
    if runtime.config.workers > 1 and runtime.config.state.redis is None:
        note += " Limits are counted per worker process: these are the counters of the worker that answered."
    body = holder.render(runtime.config, key.name, key.tier, key.limits, peek, note.strip(), data, period,
                         start_day, end_day)  # fmt: skip
    return _page(layout(f"Key {key.name}", body, who=key.name, csrf=_sessions(request).csrf(session.sid)))


def _cursor(text: str | None) -> tuple[float, int] | None:
    if not text:
        return None
    ts, _, row_id = text.partition(":")
    try:
        value = float(ts)
        return (value, int(row_id)) if math.isfinite(value) else None
    except ValueError:
        return None


async def ops_page(request: web.Request) -> web.Response:
    session = current(request)
    if session is None:
        return _redirect("/dashboard/")
    if session.role != OPERATOR:
        return _page(message_page("Operators only", "This page needs the admin key."), 403)
    runtime = request.config_dict[LIVE].current
    period = request.query.get("period", operator.DEFAULT_PERIOD)
    span = operator.PERIODS.get(period) or operator.PERIODS[period := operator.DEFAULT_PERIOD]
    now = time.time()
    start = now - span
    try:
        data = await UsageReader(runtime.config.database).operator(start, now + 1)
    except (UsageLogError, sqlite3.Error) as exc:
        return _unavailable(exc)
    body = operator.render(runtime.config, runtime.balancer, data, period, int(start // DAY), int(now // DAY))
    return _page(layout("Operator", body, who="operator", csrf=_sessions(request).csrf(session.sid)))


async def style(request: web.Request) -> web.Response:
    return web.Response(text=STYLE, content_type="text/css", charset="utf-8")
