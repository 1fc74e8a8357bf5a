"""A short run of scripts/soak.py against two `gateway serve` instances sharing both
stores: the usage log in PostgreSQL (a schema of the test's own on the shared server)
and the tier limits in Redis (a key prefix of the run's own).  Mixed requests, client
hang-ups and upstream faults spread over both; exactly one row per request, every
request counted by one instance's /metrics, no Redis call failed, and Redis's
monthly counter and concurrency slots agree with the rows.  A missing server fails
under CI and skips elsewhere (pg_support, redis_support)."""

from __future__ import annotations

import sys
from pathlib import Path

from pg_support import fresh_schema, require_asyncpg
from redis_support import REDIS_URL, require_redis_package, shared_client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from soak import run_soak  # noqa: E402

require_asyncpg()
require_redis_package()


async def test_two_instances_on_postgres_and_redis_lose_nothing() -> None:
    client = await shared_client()  # skips (or fails under CI) when Redis does not answer
    await client.aclose()
    async with fresh_schema() as database:
        report = await run_soak(requests=300, concurrency=16, instances=2, database=database, redis=REDIS_URL)
    lines = "\n".join(report.lines())
    assert [f for f in report.failures if f not in report.disagreements] == [], lines
    assert report.sent == 300 == report.rows == report.distinct_ids
    assert [one.sent for one in report.instances] == [150, 150] == [one.counted for one in report.instances]
    assert report.hung_up > 0 and len(report.statuses) > 1  # faults and hang-ups really happened
    assert report.redis.startswith("month tokens"), lines  # the Redis checks ran
    # a client hanging up while the Redis release was in flight used to cancel it (the
    # slot then waited for its lease, the month kept the estimate): pipeline.py shields it
    assert not report.disagreements, lines
