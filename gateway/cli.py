"""Command line: `gateway serve | check-config | usage | keys`."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import re
import sqlite3
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from gateway import __version__
from gateway.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from gateway.workers import WorkerLink

log = logging.getLogger("gateway")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description="OpenAI-compatible AI gateway")
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", required=True, help="YAML configuration file")
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port")
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    serve.add_argument(
        "--log-format", default="text", choices=["text", "json"], help="stderr lines as text, or one JSON object each"
    )

    check = sub.add_parser("check-config", help="validate a configuration file (exit 2 when invalid)")
    check.add_argument("--config", required=True)

    usage = sub.add_parser("usage", help="token totals per key and model from the usage log")
    usage.add_argument("--config", required=True)
    usage.add_argument("--since", help="ISO date/time (2026-11-01) or a span back from now (30m, 24h, 7d)")
    usage.add_argument("--tiers", action="store_true", help="also print totals per tier")
    usage.add_argument("--errors", action="store_true", help="also print failed calls by error code and status")
    usage.add_argument("--json", action="store_true", help="every table as one JSON object")

    keys = sub.add_parser("keys", help="make a client key; list the configured ones").add_subparsers(
        dest="keys_command", required=True
    )
    new = keys.add_parser("new", help="print a new random key once, and the keys: entry (its sha256) to paste")
    new.add_argument("--name", required=True)
    new.add_argument("--tier", required=True)
    new.add_argument("--config", help="check that the tier exists and the name is free in this file")
    listing = keys.add_parser("list", help="the keys of a configuration: tier, limits, usable or not")
    listing.add_argument("--config", required=True)

    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "check-config":
        return _check(args.config)
    if args.command == "keys":
        return _keys_new(args.name, args.tier, args.config) if args.keys_command == "new" else _keys_list(args.config)
    return _usage(args.config, args.since, args.tiers, errors=args.errors, as_json=args.json)


def _load(path: str, *, probe_database: bool = False) -> Config | None:
    """The configuration, or None after printing its problems under the file's name
    (named here once: the problems themselves start with their line and column)."""
    try:
        return load_config(path, probe_database=probe_database)
    except ConfigError as exc:
        print(f"{path}: invalid configuration:", file=sys.stderr)
        for line in exc.errors:
            print(f"  {line}", file=sys.stderr)
        return None


def _check(path: str) -> int:
    # check-config also looks inside an existing database file (serve finds out when it
    # opens it, and says so in one ERROR line)
    config = _load(path, probe_database=True)
    if config is None:
        return 2
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    # config.keys holds the usable keys only: one whose variable is unset was left out
    counts = (_count(len(config.providers), "provider"), _count(len(config.models), "model"),
              _count(len(config.tiers), "tier"), _count(len(config.keys), "key"))  # fmt: skip
    print(f"{path}: OK ({', '.join(counts)})")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from gateway.logs import setup_logging

    setup_logging(args.log_level, args.log_format)  # before any fork: workers log the same way
    config = _load(args.config)
    if config is None:
        return 2
    for warning in config.warnings:
        log.warning("%s", warning)
    # Keys listed but none usable (their variables unset): the gateway would start and
    # refuse every call.  Said once: not again when the configuration already said it.
    if not config.keys and not any(w.endswith("every request will answer 401") for w in config.warnings):
        log.warning("keys: no usable key; every request will answer 401")
    host, port = args.host or config.host, args.port or config.port
    if config.workers == 1:
        code = _serve_one(config, args.config, host, port)
        _exit_if_threads_linger(code)
        return code
    if sys.platform == "win32":
        log.error("server.workers > 1 needs fork and SO_REUSEPORT (Linux, macOS, BSD)")
        return 2
    from gateway.workers import supervise

    # said before the workers bind: "starting", since a taken port still stops them (one ERROR line)
    summary = _summary(config)
    log.info("gateway %s starting %d workers on http://%s:%d/v1 %s", __version__, config.workers, host, port, summary)
    code = supervise(config.workers, lambda link: _serve_one(config, args.config, host, port, link=link))
    if code == 0:  # each worker said "stopped in ..."; this is the whole gateway's last line
        log.info("gateway stopped: all %d workers have exited", config.workers)
    return code


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _summary(config: Config) -> str:
    """What the start-up line tells at a glance; `config.keys` holds only the keys that
    authenticate (one whose variable is unset was left out, with a warning)."""
    counts = (
        _count(len(config.providers), "provider"),
        _count(len(config.models), "model"),
        _count(len(config.tiers), "tier"),
        _count(len(config.keys), "usable key"),
    )
    return f"({', '.join(counts)})"


def _serve_one(config: Config, path: str, host: str, port: int, *, link: WorkerLink | None = None) -> int:
    """Serve until SIGTERM/SIGINT in this process; with workers, each worker runs this.
    A failure to start is one ERROR line (with workers: reported once, by the supervisor)."""
    from gateway import server
    from gateway.app import create_app
    from gateway.workers import STARTUP_FAILED, listening_socket

    try:
        import uvloop  # optional: faster event loop when installed
    except ImportError:
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop

    def failed(line: str) -> int:
        if link is None:
            log.error("%s", line)
            return 1
        link.report_failure(line)
        return STARTUP_FAILED

    try:
        sock = listening_socket(host, port, reuse_port=config.workers > 1)
    except OSError as exc:
        # one line, no traceback; for the commonest cause, the way out
        hint = " (another process holds this port: choose another with --port)" if exc.errno == errno.EADDRINUSE else ""
        return failed(f"cannot listen on {host}:{port}: {exc.strerror or exc}{hint}")

    def started() -> None:
        if link is None:
            log.info("gateway %s listening on http://%s:%d/v1 %s", __version__, host, port, _summary(config))

    try:
        app = create_app(config, path)
        server.run(
            app,
            sock,
            config,
            loop_factory=loop_factory,
            watch_fd=link.parent_fd if link else None,
            on_started=started,
        )
    except server.StartupError as exc:
        return failed(str(exc))
    return 0


def _exit_if_threads_linger(code: int) -> None:
    """A library thread left running (aiosqlite's, after a database that failed to open)
    would keep the interpreter, and the process, alive after the stop: exit anyway."""
    from gateway.server import lingering_threads

    threads = lingering_threads()
    if threads:
        log.warning("exiting with %d threads still running: %s", len(threads), ", ".join(t.name for t in threads))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


_SPAN = re.compile(r"^(\d+)\s*([smhdw])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(value: str, now: float | None = None) -> float:
    """'7d' / '24h' back from now, or an ISO date or date-time (UTC unless it says)."""
    now = time.time() if now is None else now
    match = _SPAN.match(value.strip())
    if match:
        return now - int(match.group(1)) * _SECONDS[match.group(2)]
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"--since: cannot read {value!r}; use 2026-11-01, 2026-11-01T12:00 or 30m/24h/7d") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _usage(path: str, since: str | None, by_tier: bool = False, *, errors: bool = False, as_json: bool = False) -> int:
    """Totals per key and model; per tier with `by_tier`; failed calls by error code and
    status with `errors`; and, for every key with a monthly quota, what is left of it
    this calendar month (UTC), whatever `since` says.  `as_json`: all of it, as JSON."""
    config = _load(path)
    if config is None:
        return 2
    try:
        start = parse_since(since) if since else 0.0
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    from gateway.limits import month_start
    from gateway.usage_record import UsageLogError
    from gateway.usage_report import as_json as report_json
    from gateway.usage_report import nothing_logged, read_report

    month_since = month_start(time.time())
    try:
        found = read_report(config.database, start, month_since)
    except UsageLogError as exc:  # names the database, never its password
        print(f"cannot read the usage log: {exc}", file=sys.stderr)
        return 1
    except sqlite3.Error as exc:
        print(f"cannot read the usage log: usage database {config.database}: {exc}", file=sys.stderr)
        return 1
    month = found.month if found is not None else {}
    quotas = [
        (key.name, key.tier, key.limits.tokens_per_month, month.get(key.name) or 0)
        for key in sorted(config.keys.values(), key=lambda k: k.name)
        if key.limits.tokens_per_month is not None
    ]
    if as_json:
        print(json.dumps(report_json(found, start if since else None, month_since, quotas), indent=2))
        return 0
    if found is None:
        print(nothing_logged(config.database))
        return 0
    rows, tiers = found.by_key, found.by_tier
    _table(("key", "model", "requests", "errors", "prompt", "completion", "total", "estimated"), rows, 2)
    if not rows:
        print("(no requests in this period)")
    if by_tier and tiers:
        print()
        _table(("tier", "requests", "errors", "prompt", "completion", "total"), tiers, 1)
    if errors:
        print()
        if found.errors:
            _table(("key", "model", "error_code", "status", "requests"), found.errors, 3)
        else:
            print("(no failed requests in this period)")
    if quotas:
        print()
        _table(
            ("key", "tier", "month quota", "used", "remaining"),
            [(name, tier, quota, used, max(0, quota - used)) for name, tier, quota, used in quotas],
            2,
        )
    return 0


def _table(header: tuple[str, ...], rows: list[tuple[object, ...]], text_columns: int) -> None:
    """Print aligned columns: the first `text_columns` to the left, numbers to the right."""
    table = [header, *[tuple(str(v or 0) for v in row) for row in rows]]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for row in table:
        cells = zip(row, widths, strict=True)
        print("  ".join(cell.ljust(w) if i < text_columns else cell.rjust(w) for i, (cell, w) in enumerate(cells)))


def _keys_new(name: str, tier: str, path: str | None) -> int:
    """A new key on stdout, then its `keys:` entry (two lines a script can take apart);
    what to do with them on stderr.  The key is not kept anywhere: shown this once."""
    from gateway.keytool import config_problems, entry_line, name_problems, new_key

    problems = name_problems(name, tier)
    if not problems and path is not None:
        config = _load(path)
        if config is None:
            return 2
        problems = config_problems(config, path, name, tier)
    if problems:
        for problem in problems:
            print(f"keys new: {problem}", file=sys.stderr)
        return 2
    key = new_key()
    where = path or "the configuration"
    print(f"a new key for {name!r} (tier {tier!r}), shown only this once: give it to its user now", file=sys.stderr)
    print(key, flush=True)  # before the next stderr line, also when both go to one pipe
    print(f"paste this entry under `keys:` in {where}, then reload (kill -HUP <pid>):", file=sys.stderr)
    print(entry_line(name, tier, key), flush=True)
    return 0


def _keys_list(path: str) -> int:
    """Every `keys:` entry: its tier, its limits after the tier's, and whether it can
    authenticate (a `key: ${VAR}` whose variable is unset cannot)."""
    from gateway.keytool import key_entries

    config = _load(path)
    if config is None:
        return 2
    entries = key_entries(config, path)
    if not entries:
        print(f"{path}: no keys")
        return 0

    def limit(value: int | None) -> str:
        return "-" if value is None else str(value)

    rows = [
        (e.name, e.tier, e.secret, "yes" if e.usable else f"no: {e.why_not}",
         *(limit(getattr(e.limits, f)) for f in ("rpm", "tpm", "concurrency", "tokens_per_month")))
        for e in entries
    ]  # fmt: skip
    _table(("name", "tier", "secret", "usable", "rpm", "tpm", "concurrency", "tokens/month"), rows, 4)
    return 0
