"""The configuration in force, and its replacement on reload.

Everything a request needs that derives from the YAML (the config itself, the
routing targets and their health) is one immutable `Runtime`.  A request takes
the current one when it starts and keeps it to the end, so a reload never changes
the rules under a request in flight.  An invalid new file is rejected whole."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from gateway.balancer import Balancer
from gateway.config import Config, ConfigError, load_config

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Runtime:
    config: Config
    balancer: Balancer

    @classmethod
    def build(cls, config: Config) -> Runtime:
        return cls(config, Balancer(config))


# What a reload cannot change in a running process: the listening socket, the number
# of processes, the usage database, the shared-state connection.  Every other `server.*` setting applies live
# (gateway/server/); the rest of the file applies to the next request.
_RESTART_ONLY: Final = (("server.host", "host"), ("server.port", "port"), ("server.workers", "workers"),
                        ("database", "database"), ("state", "state"))  # fmt: skip


def restart_only_changes(old: Config, new: Config) -> list[tuple[str, object, object]]:
    """(setting, old value, new value) for each changed setting that needs a restart."""
    return [(name, getattr(old, f), getattr(new, f)) for name, f in _RESTART_ONLY if getattr(old, f) != getattr(new, f)]


class Live:
    """Holds the current `Runtime`; `reload` swaps it atomically (one assignment)."""

    def __init__(self, runtime: Runtime, path: str | Path | None = None) -> None:
        self.current = runtime
        self.path = path

    def reload(self) -> bool:
        if self.path is None:
            log.warning("reload requested, but the configuration was not loaded from a file")
            return False
        try:
            config = load_config(self.path)
        except ConfigError as exc:
            log.error(
                "reload rejected (%s), the old configuration stays in force:\n  %s", self.path, "\n  ".join(exc.errors)
            )
            return False
        for setting, before, after in restart_only_changes(self.current.config, config):
            log.warning("reload: %s changed (%s -> %s); it takes effect only after a restart", setting, before, after)
        for warning in config.warnings:
            log.warning("%s", warning)
        self.current = Runtime.build(config)
        log.info("configuration reloaded from %s", self.path)
        return True
