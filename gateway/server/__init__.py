"""The HTTP server under the app: aiohttp's connection protocol, hardened for the open
internet, and one process's start, reload and graceful stop (`run`).

What aiohttp's defaults left open, and what closes it here:

- A request its parser rejects (bare LF, a control character, obs-fold) was logged
  with a traceback quoting the raw bytes (keys, prompts) and echoed in a text 400.
  Now: an OpenAI-shaped 400 that quotes nothing, one WARNING line without the bytes.
- No time limit on a request's headers or body (slowloris): `header_timeout` from
  connect (or from the first byte of a keep-alive connection's next request),
  `body_timeout` for the whole body once the headers are in (408).  Both reuse
  aiohttp's keep-alive timer, or a timer armed only when a body did not arrive with
  its headers: a request that arrives whole costs no timer.
- No connection cap: at `max_connections` a new connection closes the oldest
  connection that is not serving a request (silent or half-sent ones first), or is
  refused with a 503 when every one is busy.  A rate-limited WARNING says so.
- A `Content-Length` over `max_body_bytes` (`Expect: 100-continue` too) is answered
  413 at once, without reading the body.
- SIGTERM took about 2.3 x `shutdown_timeout`: aiohttp's `RequestHandler.shutdown`
  waits up to the timeout for the handler, then up to the timeout again after
  "cancelling" it (which only fails its body reader, not a stream), each rounded up
  to whole seconds, then cleans up.  `_stop` holds the whole stop to the timeout:
  in-flight requests get it minus a reserve, then `app[STOPPING]` is set and their
  handlers are cancelled (a stream ends with a final error event), then the usage
  log is flushed.

Modules: protocol.py (the connection protocol and `Server`: deadlines, the cap,
parser errors), settings.py (the `server.*` values connections read, the
open-file limit), lifecycle.py (`run`: start, reload, graceful stop, signals).
"""

from __future__ import annotations

from gateway.server.lifecycle import StartupError, lingering_threads, run
from gateway.server.protocol import RequestTimeout, Server
from gateway.server.settings import Settings, default_max_connections, raise_open_files_limit

__all__ = [
    "RequestTimeout",
    "Server",
    "Settings",
    "StartupError",
    "default_max_connections",
    "lingering_threads",
    "raise_open_files_limit",
    "run",
]
