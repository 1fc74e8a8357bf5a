"""`gateway keys new` and `gateway keys list`: client keys without the key in the YAML.

A new key is `sk-gw-` + 32 random bytes (base64url, 43 characters).  The gateway only
ever needs its sha256 (`key_sha256` in a `keys:` entry), so the key itself is shown
once, to be handed to its user, and never written anywhere by the gateway.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from gateway.config import LIMIT_FIELDS, Config, Limits, hash_key

KEY_PREFIX: Final = "sk-gw-"
_KEY_BYTES: Final = 32  # 256 bits: guessing is out of the question, whatever the rate limits
# the loader's `${VAR}` / `${VAR:-default}` (gateway/config/reader.py), to say which variable is unset
_ENV_REF: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(_KEY_BYTES)


def entry_line(name: str, tier: str, key: str) -> str:
    """The `keys:` list item to paste, as YAML in flow style; quoted where YAML needs it
    (a name with `: ` or `#`, a hash made only of digits) so it reads back as written."""
    item = {"name": name, "key_sha256": hash_key(key), "tier": tier}
    return yaml.safe_dump([item], default_flow_style=None, sort_keys=False, width=10**6).rstrip("\n")


def name_problems(name: str, tier: str) -> list[str]:
    """What makes `name` / `tier` unusable in any configuration."""
    problems = []
    for what, value in (("--name", name), ("--tier", tier)):
        if not value.strip():
            problems.append(f"{what} must not be empty")
        elif any(ord(c) < 32 or ord(c) == 127 for c in value):
            problems.append(f"{what} must not contain control characters")
    return problems


def config_problems(config: Config, path: str | Path, name: str, tier: str) -> list[str]:
    """Why an entry (`name`, `tier`) cannot be added to this (valid) configuration."""
    problems = []
    if tier not in config.tiers:
        problems.append(f"tier {tier!r} is not defined in {path} (tiers: {', '.join(config.tiers) or 'none'})")
    # every entry counts, the disabled ones too (config.keys has only the usable keys):
    # the loader refuses a duplicate name either way
    if name in {entry.name for entry in key_entries(config, path)}:
        problems.append(f"a key named {name!r} is already in {path}: choose another --name")
    return problems


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """One `keys:` entry as `gateway keys list` shows it."""

    name: str
    tier: str
    secret: str  # "key" or "key_sha256": how the entry gives its secret
    usable: bool
    why_not: str  # for an unusable entry: the unset variable
    limits: Limits


def key_entries(config: Config, path: str | Path, environ: Mapping[str, str] | None = None) -> list[KeyEntry]:
    """Every `keys:` entry of the file at `path`, in file order; `config` is that file,
    already loaded and valid (the loader's verdict on usability is the one shown)."""
    env = os.environ if environ is None else environ
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    usable = {key.name: key for key in config.keys.values()}
    out = []
    for spec in raw.get("keys") or []:
        name, tier = str(spec.get("name")), str(spec.get("tier"))
        secret = "key" if "key" in spec else "key_sha256"
        found = usable.get(name)
        if found is not None:
            out.append(KeyEntry(name, tier, secret, True, "", found.limits))
            continue
        # the loader left it out: only a `key: ${VAR}` whose variable is unset or empty is
        unset = [m.group(1) for m in _ENV_REF.finditer(str(spec.get("key", ""))) if not env.get(m.group(1))]
        own: dict[str, Any] = spec.get("limits") or {}
        limits = Limits(**{f: own.get(f) for f in LIMIT_FIELDS})
        base = config.tiers[tier].limits if tier in config.tiers else Limits()
        why = f"{unset[0]} is not set" if unset else "disabled"
        out.append(KeyEntry(name, tier, secret, False, why, limits.over(base)))
    return out
