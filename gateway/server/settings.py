"""The `server.*` values the connections read (`Settings`, updated in place by a
reload), and the open-file limit behind the default `max_connections`."""

from __future__ import annotations

import resource
from dataclasses import dataclass

from gateway.config import Config

_FDS_PER_CONNECTION = 2  # a client connection may hold an upstream one too
_FDS_RESERVED = 64  # log files, the database, the listening socket, DNS...
_MAX_AUTO_CONNECTIONS = 10_000


@dataclass(slots=True)
class Settings:
    """The `server.*` values connections read; a reload updates them in place."""

    header_timeout: float
    body_timeout: float
    keepalive_timeout: float
    max_connections: int
    max_body_bytes: int
    shutdown_timeout: float
    open_files: int  # this process's open-file limit, for the default `max_connections`

    @classmethod
    def from_config(cls, config: Config, open_files: int) -> Settings:
        settings = cls(0, 0, 0, 0, 0, 0, open_files)
        settings.update(config)
        return settings

    def update(self, config: Config) -> None:
        self.header_timeout = config.header_timeout
        self.body_timeout = config.body_timeout
        self.keepalive_timeout = config.keepalive_timeout
        self.max_body_bytes = config.max_body_bytes
        self.shutdown_timeout = config.shutdown_timeout
        self.max_connections = config.max_connections or default_max_connections(self.open_files)


def default_max_connections(open_files: int) -> int:
    return max(16, min(_MAX_AUTO_CONNECTIONS, (open_files - _FDS_RESERVED) // _FDS_PER_CONNECTION))


def raise_open_files_limit() -> int:
    """Raise the soft open-file limit to the hard one (a connection is a descriptor; the
    soft default, often 1024, is what let 1,100 idle sockets lock every client out).
    Returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return soft if soft != resource.RLIM_INFINITY else wanted
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError):  # macOS refuses more than OPEN_MAX
        return soft
    return wanted
