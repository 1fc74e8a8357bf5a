"""One process's life: `run` starts the app on a listening socket, serves until
SIGTERM/SIGINT (or the supervisor's end), applies a SIGHUP reload, and stops
gracefully within `server.shutdown_timeout`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable

from aiohttp import web

from gateway.appkeys import LIVE, STOPPING
from gateway.config import Config
from gateway.server.protocol import Server
from gateway.server.settings import Settings, raise_open_files_limit

log = logging.getLogger("gateway.server")  # the name its log lines have always carried

_BACKLOG = 1024


class StartupError(Exception):
    """The app could not start (its usage database, say); the message is one line for the operator."""


class _Runner(web.AppRunner):
    """An AppRunner whose server is ours (the app's start-up and freeze unchanged)."""

    def __init__(self, app: web.Application, settings: Settings) -> None:
        super().__init__(app, handle_signals=False, access_log=None)
        self._settings = settings

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # runs the app's start-up
        return Server(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=True,  # a client hang-up cancels the handler and closes the upstream call
            loop=asyncio.get_running_loop(),
            settings=self._settings,
        )


# -- one process: start, reload, stop ----------------------------------------------------


def run(
    app: web.Application,
    sock: socket.socket,
    config: Config,
    *,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
    watch_fd: int | None = None,
    on_started: Callable[[], None] | None = None,
) -> None:
    """Serve `app` on `sock` until SIGTERM/SIGINT, or end-of-file on `watch_fd` (the
    supervisor is gone), then stop within `server.shutdown_timeout`.  Raises
    `StartupError` when the app cannot start."""
    settings = Settings.from_config(config, raise_open_files_limit())
    loop = loop_factory() if loop_factory else asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(_serve(app, sock, settings, watch_fd, on_started))
    finally:
        try:
            _cancel_leftovers(loop)
        finally:
            asyncio.set_event_loop(None)
            loop.close()


async def _serve(
    app: web.Application,
    sock: socket.socket,
    settings: Settings,
    watch_fd: int | None,
    on_started: Callable[[], None] | None,
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload, app, settings)
    if watch_fd is not None:
        loop.add_reader(watch_fd, _parent_gone, loop, watch_fd, stop)
    runner = _Runner(app, settings)
    try:
        await _start(runner, stop)
    except BaseException:
        sock.close()  # free the port at once
        raise
    if stop.is_set():  # stopped while starting
        sock.close()
        await _cleanup(app, loop.time() + settings.shutdown_timeout)
        await _threads_finish(0.5)
        return
    site = web.SockSite(runner, sock, backlog=_BACKLOG)
    try:
        await site.start()
    except OSError as exc:
        sock.close()
        await _cleanup(app, loop.time() + 1.0)
        raise StartupError(f"cannot serve on the listening socket: {exc.strerror or exc}") from None
    log.debug("open-file limit %d; server.max_connections %d", settings.open_files, settings.max_connections)
    if on_started is not None:
        on_started()
    await stop.wait()
    server = runner.server
    assert isinstance(server, Server)
    await _stop(app, site, server, settings)


async def _start(runner: _Runner, stop: asyncio.Event) -> None:
    """The app's start-up (usage database, upstream session), abandoned on SIGTERM;
    any failure becomes one `StartupError` line, its resources released."""
    setup = asyncio.ensure_future(runner.setup())
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((setup, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if not setup.done():
        setup.cancel()
        with contextlib.suppress(BaseException):
            await setup
    elif setup.exception() is not None:
        exc = setup.exception()
        await _cleanup(runner.app, asyncio.get_running_loop().time() + 1.0)
        await _threads_finish(0.5)
        raise StartupError(f"cannot start: {str(exc).strip() or type(exc).__name__}") from None


async def _threads_finish(timeout: float) -> None:
    """Give threads an unfinished start left behind (aiosqlite's, told to stop) a moment
    to end while the loop still runs: one answering a closed loop prints a traceback."""
    loop = asyncio.get_running_loop()
    until = loop.time() + timeout
    main = threading.main_thread()
    while loop.time() < until and any(t is not main and t.is_alive() for t in threading.enumerate()):
        await asyncio.sleep(0.02)


async def _stop(app: web.Application, site: web.SockSite, server: Server, settings: Settings) -> None:
    """The graceful stop, all of it within `shutdown_timeout` (plus the process's exit)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    budget = settings.shutdown_timeout
    deadline = started + budget
    # the reserve pays for the final events of cut streams and the usage log's flush
    grace = budget - min(1.0, budget / 4)
    log.info(
        "stopping: %d requests in flight, cut after %g s if still running (server.shutdown_timeout %g s)",
        server.in_progress(), grace, budget,
    )  # fmt: skip
    await site.stop()  # the listening socket closes: new connections are refused
    server.close_idle()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(grace):
            await app.shutdown()  # on_shutdown hooks (none today)
    await server.wait_closed(started + grace)
    cut = 0
    if server.open > 0:
        if STOPPING in app:
            app[STOPPING].set()  # handlers that see it end their stream with a final error event
        cut = server.cancel_handlers()
        await server.wait_closed(deadline)
    server.close_all()
    await _cleanup(app, deadline + 0.5)
    log.info("stopped in %.1f s; %d requests were cut short", loop.time() - started, cut)


async def _cleanup(app: web.Application, until: float) -> None:
    """The app's clean-up (the usage log's flush, the upstream session), bounded."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(max(0.5, until - loop.time())):
            await app.cleanup()
    except TimeoutError:
        log.error("stop: the app's clean-up did not finish in time; usage rows still queued may be lost")
    except Exception as exc:
        log.error("stop: the app's clean-up failed: %s", exc)


def _reload(app: web.Application, settings: Settings) -> None:
    """SIGHUP: the YAML again; what a running server can change applies at once."""
    live = app[LIVE]
    try:
        reloaded = live.reload()
    except Exception as exc:  # an I/O error past the file's read: the old configuration stays
        log.error("reload failed, the old configuration stays in force: %s", exc)
        return
    if reloaded:
        config = live.current.config
        settings.update(config)
        # the app reads its body limit per request from here (aiohttp's Application)
        app._client_max_size = config.max_body_bytes


def _parent_gone(loop: asyncio.AbstractEventLoop, fd: int, stop: asyncio.Event) -> None:
    """The watched pipe is readable: end-of-file means every writer (the supervisor) is gone."""
    try:
        data = os.read(fd, 1)
    except BlockingIOError:
        return
    except OSError:
        data = b""
    if not data:
        loop.remove_reader(fd)
        if not stop.is_set():
            log.warning("the supervisor is gone; stopping")
            stop.set()


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    """Tasks still alive after the stop are cancelled; a second at most for them."""
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.wait(tasks, timeout=1.0))
    for closing in (loop.shutdown_asyncgens(), loop.shutdown_default_executor()):  # DNS lookups' threads
        with contextlib.suppress(Exception):
            loop.run_until_complete(asyncio.wait_for(closing, 1.0))


def lingering_threads(timeout: float = 1.0) -> list[threading.Thread]:
    """Non-daemon threads still alive after up to `timeout` s: they would keep the
    interpreter from exiting (aiosqlite's, left by a database that failed to open)."""
    deadline = time.monotonic() + timeout
    alive = []
    for thread in threading.enumerate():
        if thread is threading.main_thread() or thread.daemon:
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            alive.append(thread)
    return alive
