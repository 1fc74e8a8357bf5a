"""The operator's page: totals per tier, key and model over a chosen period (charts and
tables), errors by status and code, latency and time-to-first-byte percentiles per
model, the configuration in force, and the live state of deployments."""

from __future__ import annotations

from typing import Final

from gateway.balancer import Balancer
from gateway.config import Config
from gateway.dashboard import live
from gateway.dashboard.html import day, e, periods, table
from gateway.dashboard.queries import OperatorData
from gateway.dashboard.svg import hbars, stacked_bars

PERIODS: Final = {"1h": 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400}  # 30d of 1M rows ~1 s (usage_hourly)
DEFAULT_PERIOD: Final = "24h"
_TOTALS: Final = ("requests", "errors", "prompt tokens", "completion tokens", "total tokens")


def _totals(data: OperatorData, index: int) -> list[tuple[object, ...]]:
    """Rows of (name, requests, errors, prompt, completion, total) grouped by column `index`
    of the (tier, key, model, ...) groups, largest total first."""
    sums: dict[str, list[int]] = {}
    for row in data.groups:
        acc = sums.setdefault(str(row[index]), [0, 0, 0, 0, 0])
        for i, v in enumerate(row[3:8]):
            acc[i] += int(v or 0)
    return [(name, *acc) for name, acc in sorted(sums.items(), key=lambda kv: (-kv[1][4], kv[0]))]


def render(config: Config, balancer: Balancer, data: OperatorData, period: str, start_day: int, end_day: int) -> str:
    out = ["<h1>Operator</h1>", periods("/dashboard/ops", "period", list(PERIODS), period)]
    by_tier, by_key, by_model = _totals(data, 0), _totals(data, 1), _totals(data, 2)
    everything = [sum(int(r[i]) for r in by_tier) for i in range(1, 6)]  # type: ignore[call-overload]
    out.append(f"<h2>Totals, last {e(period)}</h2>")
    out.append(table(("", *_TOTALS), [("all", *everything)], numeric=range(1, 6), cls="all"))

    series: dict[str, dict[str, float]] = {}
    for d, tier, tokens in data.daily:
        series.setdefault(str(tier), {})[day(int(d))] = float(tokens)
    out.append(stacked_bars("Tokens per day by tier", [day(d) for d in range(start_day, end_day + 1)], series))

    out.append('<h2 id="by-tier">By tier</h2>')
    out.append(table(("tier", *_TOTALS), by_tier, numeric=range(1, 6), cls="by-tier"))
    out.append('<h2 id="by-key">By key</h2>')
    out.append(hbars("Total tokens by key", [(str(r[0]), float(r[5])) for r in by_key[:30]]))  # type: ignore[arg-type]
    out.append(table(("key", *_TOTALS), by_key, numeric=range(1, 6), cls="by-key"))
    out.append('<h2 id="by-model">By model</h2>')
    out.append(hbars("Total tokens by model", [(str(r[0]), float(r[5])) for r in by_model[:30]]))  # type: ignore[arg-type]
    out.append(table(("model", *_TOTALS), by_model, numeric=range(1, 6), cls="by-model"))

    out.append('<h2 id="errors">Errors by status and code</h2>')
    out.append(table(("status", "error code", "requests"), data.errors, numeric=(2,), cls="errors"))

    out.append('<h2 id="latency">Latency and time to first byte, per model (ms)</h2>')
    rows = []
    for model in sorted(set(data.latency) | set(data.ttfb)):
        lat, first = data.latency.get(model, {}), data.ttfb.get(model, {})
        rows.append((model, lat.get("n"), lat.get("p50"), lat.get("p95"), lat.get("p99"),
                     first.get("p50"), first.get("p95"), first.get("p99")))  # fmt: skip
    out.append(table(("model", "requests", "latency p50", "p95", "p99", "first byte p50", "p95", "p99"), rows,
                     numeric=range(1, 8), cls="latency"))  # fmt: skip
    out.append('<p class="note">Percentiles come from buckets 20 % wide: each is within about 10 % of the exact '
               "value.</p>")  # fmt: skip

    out.append('<h2 id="live">Deployments, live</h2>')
    deployments = [(label, failures, f"cooling down, {left:g} s left" if left else "ok")
                   for label, failures, left in live.deployments(balancer)]  # type: ignore[misc]  # fmt: skip
    out.append(table(("target", "consecutive failures", "state"), deployments, numeric=(1,), cls="deployments"))
    slots = live.provider_slots(config, balancer)
    if slots:
        out.append(table(("provider", "calls in flight", "max_concurrency", "waiting"), slots, numeric=(1, 2, 3),
                         cls="slots"))  # fmt: skip
    out.append('<p class="note">Live state is this worker process\'s (with <code>state.redis</code>, cool-downs '
               "are shared by every process).</p>")  # fmt: skip

    out.append('<h2 id="config">Configuration in force</h2>')
    out.append(table(("provider", "kind", "host", "upstream keys", "max_concurrency"), live.providers(config),
                     cls="providers"))  # fmt: skip
    out.append(table(("model", "deployments"), live.models(config), cls="models"))
    out.append(table(("tier", "models", "limits"), live.tiers(config), cls="tiers"))
    out.append(table(("key", "tier", "limits"), live.keys(config), cls="keys"))
    return "".join(out)
