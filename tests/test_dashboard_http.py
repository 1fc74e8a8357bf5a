"""The dashboard over plain HTTP (aiohttp client, a real gateway on loopback): sign-in
and its cookie, CSRF, the sign-in throttle, security headers, what a key holder and the
operator see against seeded usage rows, and that nothing of one key reaches another."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import ENV, FREE_KEY, PRO_KEY, Gateway, base_config
from dashboard_support import ADMIN_KEY, cell_numbers, csrf_of, insert_sqlite, rows, sign_in
from fakes import FakeUpstream, fixture_json, json_reply

from gateway.appkeys import LIVE
from gateway.config import parse_config
from gateway.runtime import Runtime


def _doc(tmp_path: Path, url: str, admin: bool = True) -> dict[str, Any]:
    extra: dict[str, Any] = {"metrics": {"admin_key": "${ADMIN_KEY}"}} if admin else {}
    doc = base_config({"oai": ("openai", url)}, str(tmp_path / "usage.db"), **extra)
    doc["tiers"]["free"]["limits"] = {"rpm": 20, "tokens_per_month": 100000}
    return doc


@pytest.fixture
async def dash(start_gateway: Any, openai_upstream: Any, tmp_path: Path) -> Gateway:
    gw = await start_gateway(_doc(tmp_path, openai_upstream[1]), {**ENV, "ADMIN_KEY": ADMIN_KEY})
    insert_sqlite(gw.config.database, rows())
    return gw


@pytest.fixture
async def browser() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that keeps cookies for 127.0.0.1 (unsafe=True: an IP host) and shows redirects."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


def base(gw: Gateway) -> str:
    return str(gw.server.make_url("")).rstrip("/")


async def test_sign_in_sets_a_strict_httponly_cookie_without_the_key(dash: Gateway, browser: Any) -> None:
    async with browser.get(f"{base(dash)}/dashboard/signin") as form:
        token = csrf_of(await form.text())
    async with browser.post(f"{base(dash)}/dashboard/signin", data={"key": PRO_KEY, "csrf": token},
                            allow_redirects=False) as answer:  # fmt: skip
        assert answer.status == 303 and answer.headers["Location"] == "/dashboard/me"
        cookie = next(c for c in answer.headers.getall("Set-Cookie") if c.startswith("gw_session="))
    flags = [part.strip().lower() for part in cookie.split(";")]
    assert "httponly" in flags and "samesite=strict" in flags and "path=/dashboard" in flags
    assert "secure" not in flags  # plain HTTP: a Secure cookie would never come back
    assert PRO_KEY not in cookie and "sk-" not in cookie
    # behind a TLS proxy the cookie is Secure
    async with browser.get(f"{base(dash)}/dashboard/signin") as form:
        token = csrf_of(await form.text())
    async with browser.post(f"{base(dash)}/dashboard/signin", data={"key": PRO_KEY, "csrf": token},
                            headers={"X-Forwarded-Proto": "https"}, allow_redirects=False) as answer:  # fmt: skip
        cookie = next(c for c in answer.headers.getall("Set-Cookie") if c.startswith("gw_session="))
    assert "secure" in [part.strip().lower() for part in cookie.split(";")]


async def test_every_page_carries_the_security_headers(dash: Gateway, browser: Any) -> None:
    for path in ("/dashboard/", "/dashboard/signin", "/dashboard/nope"):
        async with browser.get(f"{base(dash)}{path}") as page:
            csp = page.headers["Content-Security-Policy"]
            assert "script-src" not in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
            assert page.headers["X-Frame-Options"] == "DENY"
            assert page.headers["Referrer-Policy"] == "no-referrer"
            assert page.headers["Cache-Control"] == "no-store"
            assert "<script" not in await page.text()


async def test_posts_without_the_csrf_token_are_refused(dash: Gateway, browser: Any) -> None:
    url = f"{base(dash)}/dashboard/signin"
    async with browser.get(url) as form:
        await form.read()  # the pre-session cookie is set; the token is left out below
    async with browser.post(url, data={"key": PRO_KEY}, allow_redirects=False) as answer:
        assert answer.status == 403 and "gw_session" not in answer.cookies
    async with browser.post(url, data={"key": PRO_KEY, "csrf": "0" * 64}, allow_redirects=False) as answer:
        assert answer.status == 403
    assert (await sign_in(browser, base(dash), PRO_KEY)).url.path == "/dashboard/me"
    # sign-out without its token changes nothing; with it, the session ends
    async with browser.post(f"{base(dash)}/dashboard/signout", data={}, allow_redirects=False) as answer:
        assert answer.status == 403
    async with browser.get(f"{base(dash)}/dashboard/me", allow_redirects=False) as page:
        assert page.status == 200
        token = csrf_of(await page.text())
    stolen = browser.cookie_jar.filter_cookies(dash.server.make_url("/dashboard/me"))["gw_session"].value
    async with browser.post(f"{base(dash)}/dashboard/signout", data={"csrf": token}, allow_redirects=False) as answer:
        assert answer.status == 303
    # the old cookie, replayed, is dead in this process
    async with aiohttp.ClientSession(cookies={"gw_session": stolen}) as replay:
        async with replay.get(f"{base(dash)}/dashboard/me", allow_redirects=False) as page:
            assert page.status == 303 and page.headers["Location"] == "/dashboard/"


async def test_sign_in_is_rate_limited_per_client(dash: Gateway, browser: Any) -> None:
    statuses = []
    for _ in range(11):
        statuses.append((await sign_in(browser, base(dash), "sk-wrong-guess")).status)
    assert statuses[:10] == [401] * 10 and statuses[10] == 429
    # the throttle holds even for the right key: guessing cannot be interleaved with it
    answer = await sign_in(browser, base(dash), PRO_KEY)
    assert answer.status == 429 and int(answer.headers["Retry-After"]) >= 1


async def test_a_key_holder_sees_their_own_numbers_only(dash: Gateway, browser: Any) -> None:
    answer = await sign_in(browser, base(dash), PRO_KEY)
    assert answer.status == 200 and answer.url.path == "/dashboard/me"
    async with browser.get(f"{base(dash)}/dashboard/me?period=30d&key=bob&key_name=bob") as page:
        html = await page.text()
    assert '<strong id="tier">pro</strong>' in html
    assert "<li>oai-small</li><li>oai-large</li>" in html
    assert cell_numbers(html, "totals", "oai-large") == [3, 1, 600]
    assert cell_numbers(html, "totals", "oai-small") == [3, 0, 5120]  # 50 + 70 + 5000; the 99999 is 40 days old
    assert cell_numbers(html, "totals", "all models") == [6, 1, 5720]
    for leak in ("bob", "bob-only-model", "2,000", "3,005", "rate_limit_exceeded"):
        assert leak not in html, leak
    assert "upstream_error" in html  # alice's own failed call is listed
    # the other key: its own tier, limits and numbers
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as other:
        await sign_in(other, base(dash), FREE_KEY)
        async with other.get(f"{base(dash)}/dashboard/me?period=7d") as page:
            html = await page.text()
    assert '<strong id="tier">free</strong>' in html and "alice" not in html and "oai-large" not in html
    assert cell_numbers(html, "totals", "all models") == [4, 1, 3005]
    assert cell_numbers(html, "limits", "requests per minute (rpm)") == [20, 0, 20]
    assert cell_numbers(html, "limits", "tokens this month (UTC)") == [100000, 0, 100000]


async def test_limits_left_follow_the_limiter_without_being_charged(
    dash: Gateway, browser: Any, upstream: FakeUpstream
) -> None:
    upstream.script(*(json_reply(fixture_json("openai_chat_completion_text.json")) for _ in range(2)))
    client = dash.client(FREE_KEY)
    for _ in range(2):
        await client.chat.completions.create(model="oai-small", messages=[{"role": "user", "content": "hi"}])
    await sign_in(browser, base(dash), FREE_KEY)
    for _ in range(3):  # reading the page never changes what is left
        async with browser.get(f"{base(dash)}/dashboard/me") as page:
            html = await page.text()
        assert cell_numbers(html, "limits", "requests per minute (rpm)") == [20, 2, 18]


async def test_operator_pages_are_refused_to_a_key_holder(dash: Gateway, browser: Any) -> None:
    await sign_in(browser, base(dash), PRO_KEY)
    async with browser.get(f"{base(dash)}/dashboard/ops", allow_redirects=False) as page:
        assert page.status == 403
        html = await page.text()
    assert "bob" not in html and "3,000" not in html


async def test_the_operator_sees_totals_errors_config_and_live_state(dash: Gateway, browser: Any) -> None:
    answer = await sign_in(browser, base(dash), ADMIN_KEY)
    assert answer.url.path == "/dashboard/ops"
    async with browser.get(f"{base(dash)}/dashboard/ops?period=24h") as page:
        html = await page.text()
    # requests, errors, prompt, completion, total
    assert cell_numbers(html, "by-tier", "pro") == [5, 1, 360, 360, 720]
    assert cell_numbers(html, "by-tier", "free") == [4, 1, 1502, 1503, 3005]
    assert cell_numbers(html, "by-key", "bob") == [4, 1, 1502, 1503, 3005]
    assert cell_numbers(html, "by-model", "oai-small") == [5, 1, 1560, 1560, 3120]
    assert cell_numbers(html, "errors", "502") == [1] and cell_numbers(html, "errors", "429") == [1]
    assert cell_numbers(html, "all", "all") == [9, 2, 1862, 1863, 3725]
    # the configuration by name, never a key or hash
    for secret in (PRO_KEY, FREE_KEY, ADMIN_KEY, dash.config.keys and next(iter(dash.config.keys))):
        assert secret not in html
    assert "alice" in html and "oai/oai-small-2024" in html
    async with browser.get(f"{base(dash)}/dashboard/ops?period=7d") as page:
        assert cell_numbers(await page.text(), "by-key", "alice") == [6, 1, 2860, 2860, 5720]


async def test_a_cool_down_shows_on_the_operator_page(dash: Gateway, browser: Any) -> None:
    balancer = dash.app[LIVE].current.balancer
    target = balancer.plan("oai-large")[0]
    for _ in range(dash.config.routing.failures_before_cooldown):
        balancer.failed(target)
    await sign_in(browser, base(dash), ADMIN_KEY)
    async with browser.get(f"{base(dash)}/dashboard/ops") as page:
        html = await page.text()
    assert f"<td>{target.label}</td>" in html and "cooling down" in html


async def test_revoking_a_key_ends_its_session(dash: Gateway, browser: Any, tmp_path: Path) -> None:
    await sign_in(browser, base(dash), PRO_KEY)
    doc = _doc(tmp_path, "http://127.0.0.1:9")
    doc["keys"] = [k for k in doc["keys"] if k["name"] != "alice"]
    dash.app[LIVE].current = Runtime.build(parse_config(doc, {**ENV, "ADMIN_KEY": ADMIN_KEY}))  # as a reload does
    async with browser.get(f"{base(dash)}/dashboard/me", allow_redirects=False) as page:
        assert page.status == 303


async def test_without_an_admin_key_the_operator_view_is_off(
    start_gateway: Any, openai_upstream: Any, tmp_path: Path, browser: Any
) -> None:
    gw = await start_gateway(_doc(tmp_path, openai_upstream[1], admin=False))
    async with browser.get(f"{base(gw)}/dashboard/") as page:
        assert "The operator view is off" in await page.text()
    assert (await sign_in(browser, base(gw), ADMIN_KEY)).status == 401
    assert (await sign_in(browser, base(gw), PRO_KEY)).url.path == "/dashboard/me"
    async with browser.get(f"{base(gw)}/dashboard/ops", allow_redirects=False) as page:
        assert page.status == 403
