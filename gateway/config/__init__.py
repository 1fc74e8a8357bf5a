"""The YAML configuration: loaded once, validated strictly, then frozen.

`load_config(path)` reads the file, expands `${VAR}` / `${VAR:-default}` from the
environment, checks every field and returns a `Config`.  Every problem found is
reported at once, each prefixed with the exact place in the file
(`tiers.pro.models[2]: unknown model 'gpt-5'`), as one `ConfigError`.  Nothing
here is read again per request: tiers are resolved to model sets at load time.

The package, by job: `model` (the frozen dataclasses), `loader` (the file),
`reader` (generic field readers), `parser` (the top level) and one module per group
of sections (`server`, `providers`, `access`).  Callers import from here.
"""

from gateway.config.loader import load_config, parse_config
from gateway.config.model import (
    LIMIT_FIELDS,
    PROVIDER_KINDS,
    SERVER_FIELDS,
    ApiKey,
    Config,
    ConfigError,
    Deployment,
    Limits,
    Model,
    Provider,
    Routing,
    State,
    Tier,
    Timeouts,
    hash_key,
    is_postgres,
)

__all__ = [
    "LIMIT_FIELDS",
    "PROVIDER_KINDS",
    "SERVER_FIELDS",
    "ApiKey",
    "Config",
    "ConfigError",
    "Deployment",
    "Limits",
    "Model",
    "Provider",
    "Routing",
    "State",
    "Tier",
    "Timeouts",
    "hash_key",
    "is_postgres",
    "load_config",
    "parse_config",
]
