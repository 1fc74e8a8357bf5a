"""A short run of scripts/soak.py: mixed requests, hang-ups and upstream faults against the
real `gateway serve` process; exactly one usage row per request and no leaked descriptors."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from soak import run_soak  # noqa: E402


async def test_short_soak_loses_nothing_and_leaks_nothing() -> None:
    report = await run_soak(requests=400, concurrency=16)
    assert report.failures == [], "\n".join(report.lines())
    assert report.sent == 400 == report.rows
    assert report.hung_up > 0 and len(report.statuses) > 1  # faults and hang-ups really happened
