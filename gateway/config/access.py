"""Who may use what: the `tiers` section (models and limits, `extends` resolved) and
the client `keys` section."""

from __future__ import annotations

import re
from typing import Any, Final

from gateway.config.model import LIMIT_FIELDS, ApiKey, Limits, Model, Tier, hash_key
from gateway.config.reader import FieldReader, _kind, did_you_mean

_SHA256_HEX: Final = re.compile(r"^[0-9a-f]{64}$")


class AccessSections(FieldReader):
    def tiers(self, raw: Any, models: dict[str, Model], unnamed: frozenset[str] = frozenset()) -> dict[str, Tier]:
        """`unnamed`: ids not to report as unknown (see ProviderSections.unnamed_models)."""
        if raw is None or not isinstance(raw, dict):
            self.failed.add("tiers")  # keys naming a tier would each repeat this
        if raw is None:
            if "tiers" not in self.misspelled:
                self.error("tiers", "required: at least one tier")
            return {}
        section = self.mapping(raw, "tiers", tuple(raw) if isinstance(raw, dict) else ())
        own: dict[str, list[str]] = {}
        own_limits: dict[str, Limits] = {}
        parent: dict[str, str] = {}
        for name, spec in section.items():
            here = f"tiers.{name}"
            spec = self.mapping(spec, here, ("models", "extends", "limits"))
            own_limits[str(name)] = self.limits(spec.get("limits"), f"{here}.limits")
            listed = spec.get("models", [])
            if not isinstance(listed, list):
                self.error(f"{here}.models", f"must be a list of model ids, got {_kind(listed)}")
                listed = []
            for j, model_id in enumerate(listed):
                if model_id not in models and "models" not in self.failed and model_id not in unnamed:
                    self.error(f"{here}.models[{j}]", f"unknown model {model_id!r}{did_you_mean(model_id, models)}")
            own[str(name)] = [m for m in listed if m in models]
            ext = spec.get("extends")
            if ext is not None:
                if ext not in section:
                    self.error(f"{here}.extends", f"tier {ext!r} is not defined{did_you_mean(ext, section)}")
                else:
                    parent[str(name)] = str(ext)

        tiers: dict[str, Tier] = {}
        cycles: set[frozenset[str]] = set()  # each tier of a cycle walks into it: one report
        for name in own:
            chain = [name]
            while chain[-1] in parent:
                nxt = parent[chain[-1]]
                if nxt in chain:
                    loop = chain[chain.index(nxt) :]
                    if frozenset(loop) not in cycles:
                        cycles.add(frozenset(loop))
                        self.error(f"tiers.{loop[0]}.extends", f"cycle: {' -> '.join([*loop, nxt])}")
                    break
                chain.append(nxt)
            allowed = frozenset(m for t in chain for m in own[t])
            limits = Limits()
            for t in reversed(chain):  # the root first; each child replaces what it sets
                limits = own_limits[t].over(limits)
            tiers[name] = Tier(name=name, models=allowed, limits=limits)
        return tiers

    def limits(self, raw: Any, where: str) -> Limits:
        spec = self.mapping(raw, where, LIMIT_FIELDS)
        values: dict[str, int | None] = {}
        for name in LIMIT_FIELDS:
            value = spec.get(name)
            if value is None:
                values[name] = None
            elif isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                self.error(f"{where}.{name}", f"must be a positive integer, got {value!r}")
                values[name] = None
            else:
                values[name] = value
        return Limits(**values)

    def keys(self, raw: Any, tiers: dict[str, Tier]) -> dict[str, ApiKey]:
        out: dict[str, ApiKey] = {}
        where_of: dict[str, str] = {}
        names: dict[str, int] = {}
        if raw is None:
            self.warnings.append("keys: none configured; every request will answer 401")
            return out
        if not isinstance(raw, list):
            self.error("keys", f"must be a list, got {_kind(raw)}")
            return out
        for i, spec in enumerate(raw):
            here = f"keys[{i}]"
            spec = self.mapping(spec, here, ("name", "key", "key_sha256", "tier", "limits"))
            own_limits = self.limits(spec.get("limits"), f"{here}.limits")
            name = self.string(spec, "name", here, required=True)
            tier = self.string(spec, "tier", here, required=True)
            if tier is not None and tier not in tiers and "tiers" not in self.failed:
                self.error(f"{here}.tier", f"tier {tier!r} is not defined{did_you_mean(tier, tiers)}")
            if name is not None:
                if name in names:
                    self.error(f"{here}.name", f"duplicate key name {name!r} (first at keys[{names[name]}])")
                names[name] = i
            has_plain, has_hash = "key" in spec, "key_sha256" in spec
            if has_plain == has_hash:
                if has_plain or not {f"{here}.key", f"{here}.key_sha256"} & self.misspelled:
                    self.error(here, "give exactly one of 'key' or 'key_sha256'")
                continue
            digest: str | None = None
            if has_plain:
                plain = self.string(spec, "key", here)
                if plain is None:
                    continue
                value, unset = self.expand(plain, f"{here}.key")
                if value is None:
                    self.warn(f"{here}.key", f"environment variable {unset} is not set; key {name!r} is disabled")
                    continue
                digest = hash_key(value)
            else:
                hashed = self.string(spec, "key_sha256", here)
                if hashed is None:
                    continue
                hashed = hashed.lower()
                if not _SHA256_HEX.match(hashed):
                    self.error(f"{here}.key_sha256", "must be 64 hexadecimal characters (sha256 of the key)")
                    continue
                digest = hashed
            if digest in where_of:
                self.error(here, f"duplicate key: same secret as {where_of[digest]}")
                continue
            where_of[digest] = here
            if name is not None and tier is not None:
                base = tiers[tier].limits if tier in tiers else Limits()
                out[digest] = ApiKey(name=name, key_sha256=digest, tier=tier, limits=own_limits.over(base))
        if not out:  # a gateway that answers nothing should not look fine
            self.warn("keys", "no usable key; every request will answer 401")
        return out
