"""The key holder's page: their tier and models, each limit with what is left of it
now (the limiter's counters, read with `peek`: nothing charged), their tokens per day
per model (a chart and a table), and their recent requests, a page at a time."""

from __future__ import annotations

from typing import Final

from gateway.config import Config, Limits
from gateway.dashboard.html import day, e, num, periods, table, when
from gateway.dashboard.queries import HolderData
from gateway.dashboard.svg import stacked_bars
from gateway.limits import Peek

DAYS: Final = {"7d": 7, "30d": 30, "90d": 90}
DEFAULT_DAYS: Final = "30d"


def limit_rows(limits: Limits, peek: Peek | None) -> list[tuple[object, ...]]:
    """(limit, allowed, used now, left now) for each limit field."""
    p = peek or Peek(0, 0, 0, 0)
    known = peek is not None
    return [
        ("requests per minute (rpm)", limits.rpm or "unlimited", p.requests if known else None, p.remaining_requests),
        ("tokens per minute (tpm)", limits.tpm or "unlimited", p.tokens if known else None, p.remaining_tokens),
        ("requests in flight (concurrency)", limits.concurrency or "unlimited", p.in_flight if known else None,
         p.remaining_concurrency),
        ("tokens this month (UTC)", limits.tokens_per_month or "unlimited", p.month_used if known else None,
         p.remaining_month),
    ]  # fmt: skip


def render(config: Config, name: str, tier_name: str, limits: Limits, peek: Peek | None, peek_note: str,
           data: HolderData, period: str, start_day: int, end_day: int) -> str:  # fmt: skip
    tier = config.tiers[tier_name]
    models = [m for m in config.models if m in tier.models]  # in the file's order, as /v1/models
    out = [f"<h1>Key {e(name)}</h1>", f'<p>Tier: <strong id="tier">{e(tier_name)}</strong></p>']
    out.append("<h2>Models this tier allows</h2>")
    out.append('<ul id="models">' + "".join(f"<li>{e(m)}</li>" for m in models) + "</ul>")

    out.append("<h2>Limits, now</h2>")
    rows = [(label, allowed if isinstance(allowed, str) else num(allowed), used, left)
            for label, allowed, used, left in limit_rows(limits, peek)]  # fmt: skip
    out.append(table(("limit", "allowed", "used", "left"), rows, numeric=(2, 3), cls="limits"))
    if peek_note:
        out.append(f'<p class="note">{e(peek_note)}</p>')

    out.append(f"<h2>Tokens per day, by model</h2>{periods('/dashboard/me', 'period', list(DAYS), period)}")
    days = [day(d) for d in range(start_day, end_day + 1)]
    series: dict[str, dict[str, float]] = {}
    totals: dict[str, list[int]] = {}
    for d, model, requests, errors, tokens in data.daily:
        series.setdefault(model, {})[day(int(d))] = float(tokens)
        t = totals.setdefault(model, [0, 0, 0])
        t[0], t[1], t[2] = t[0] + int(requests), t[1] + int(errors), t[2] + int(tokens)
    out.append(stacked_bars(f"Tokens per day by model, last {period}", days, series))
    total_rows = [(m, *t) for m, t in sorted(totals.items())]
    all_t = [sum(t[i] for t in totals.values()) for i in range(3)]
    out.append(table(("model", "requests", "errors", "tokens"), [*total_rows, ("all models", *all_t)],
                     numeric=(1, 2, 3), cls="totals"))  # fmt: skip

    out.append("<h2>Recent requests</h2>")
    recent = [(when(ts), endpoint, model, status, code, tokens, _ms(latency), _ms(ttfb), "yes" if stream else "")
              for _, ts, endpoint, model, status, code, tokens, latency, ttfb, stream in data.recent]  # fmt: skip
    out.append(table(("time (UTC)", "endpoint", "model", "status", "error", "tokens", "latency ms", "first byte ms",
                      "stream"), recent, numeric=(3, 5, 6, 7), cls="recent"))  # fmt: skip
    if data.more and data.recent:
        last_id, last_ts = data.recent[-1][0], data.recent[-1][1]
        out.append(f'<p><a id="older" href="/dashboard/me?period={e(period)}&amp;before={last_ts!r}:{int(last_id)}">'
                   "Older requests</a></p>")  # fmt: skip
    return "".join(out)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(float(value), 1)
