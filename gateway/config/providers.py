"""The `providers` and `models` sections (a model's deployments name providers)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, Final
from urllib.parse import urlsplit

from gateway.config.model import PROVIDER_KINDS, Deployment, Model, Provider, Timeouts
from gateway.config.reader import FieldReader, _kind, did_you_mean

_VERSION: Final = re.compile(r"^v\d+")  # /v1, /v1beta, /v4: where OpenAI-compatible APIs live
_MODEL_FIELDS: Final = ("id", "provider", "upstream", "owned_by", "created", "max_tokens", "deployments")


def missing_version(base_url: str) -> str | None:
    """Why an OpenAI-kind `base_url` is probably one segment short, or None.  The gateway
    appends `/chat/completions` to it, and OpenAI-compatible servers (OpenAI, Groq,
    OpenRouter, Ollama, Gemini's /v1beta/openai...) serve that under a version segment."""
    parts = urlsplit(base_url)
    path = parts.path.rstrip("/")
    if any(_VERSION.match(segment) for segment in path.split("/")):
        return None
    host = parts.netloc.rpartition("@")[2]  # never a user:password into a warning
    return (
        f"no version segment such as /v1; requests would go to {parts.scheme}://{host}{path}/chat/completions "
        "(OpenAI-compatible servers serve /v1/chat/completions)"
    )


class ProviderSections(FieldReader):
    # what entries without an `id` hold under unknown fields (`idd: gpt-4o`): most likely
    # the ids they meant, so a tier naming one is not reported as well
    unnamed_models: frozenset[str] = frozenset()

    def providers(self, raw: Any) -> Iterator[tuple[str, Provider]]:
        where = "providers"
        if raw is None or not isinstance(raw, dict):
            self.failed.add(where)  # models naming a provider would each repeat this
        if raw is None:
            if where not in self.misspelled:
                self.error(where, "required: at least one provider")
            return
        section = self.mapping(raw, where, tuple(raw) if isinstance(raw, dict) else ())
        allowed = (
            "kind", "base_url", "api_key", "api_keys", "headers", "timeouts", "max_tokens", "max_concurrency",
            "queue_timeout", "responses",
        )  # fmt: skip
        for name, spec in section.items():
            here = f"{where}.{name}"
            spec = self.mapping(spec, here, allowed)
            kind = self.string(spec, "kind", here, required=True)
            if kind is not None and kind not in PROVIDER_KINDS:
                self.error(f"{here}.kind", f"unknown kind {kind!r} (expected one of: {', '.join(PROVIDER_KINDS)})")
            base_url = self.string(spec, "base_url", here, required=True) or ""
            expanded, unset = self.expand(base_url, f"{here}.base_url")
            if expanded is None:
                self.error(f"{here}.base_url", f"environment variable {unset} is not set")
            base_url = expanded or ""
            if base_url and not base_url.startswith(("http://", "https://")):
                self.error(f"{here}.base_url", "must start with http:// or https://")
            elif base_url and kind == "openai" and (why := missing_version(base_url)) is not None:
                self.warn(f"{here}.base_url", why)
            api_keys, api_key_env = self.api_keys(spec, here)
            api_key = api_keys[0] if api_keys else None
            headers = self.headers(spec.get("headers"), f"{here}.headers")
            tmap = self.mapping(spec.get("timeouts"), f"{here}.timeouts", ("connect", "first_byte", "read", "total"))
            defaults = Timeouts()
            timeouts = Timeouts(
                connect=self.number(tmap, "connect", f"{here}.timeouts", defaults.connect),
                first_byte=self.number(tmap, "first_byte", f"{here}.timeouts", defaults.first_byte),
                read=self.number(tmap, "read", f"{here}.timeouts", defaults.read),
                total=self.number(tmap, "total", f"{here}.timeouts", defaults.total),
            )
            max_concurrency = None
            if spec.get("max_concurrency") is not None:
                max_concurrency = int(self.number(spec, "max_concurrency", here, 1, integer=True))
            max_tokens = None
            if "max_tokens" in spec:
                max_tokens = int(self.number(spec, "max_tokens", here, 4096, integer=True))
            responses = spec.get("responses", "translate")
            if responses not in ("native", "translate"):
                self.error(f"{here}.responses", f"must be 'native' or 'translate', got {responses!r}")
            elif responses == "native" and kind not in (None, "openai"):
                self.error(f"{here}.responses", "'native' is for kind openai (servers that speak the Responses API)")
            yield (
                str(name),
                Provider(
                    name=str(name),
                    kind=kind or "openai",
                    base_url=base_url.rstrip("/"),
                    api_key=api_key,
                    api_key_env=api_key_env,
                    headers=headers,
                    timeouts=timeouts,
                    max_tokens=max_tokens,
                    api_keys=api_keys,
                    max_concurrency=max_concurrency,
                    queue_timeout=self.number(spec, "queue_timeout", here, 10.0, zero=True),
                    responses="native" if responses == "native" else "translate",
                ),
            )

    def api_keys(self, spec: dict[str, Any], here: str) -> tuple[tuple[str, ...], str | None]:
        """The provider's usable keys, and the first unset variable (for the 503 message)."""
        if "api_key" in spec and "api_keys" in spec:
            self.error(here, "give 'api_key' or 'api_keys', not both")
        raw = spec.get("api_keys", [spec["api_key"]] if spec.get("api_key") is not None else [])
        if not isinstance(raw, list):
            self.error(f"{here}.api_keys", f"must be a list, got {_kind(raw)}")
            return (), None
        keys: list[str] = []
        first_unset: str | None = None
        for j, item in enumerate(raw):
            where = f"{here}.api_keys[{j}]" if "api_keys" in spec else f"{here}.api_key"
            if not isinstance(item, str) or not item:
                self.error(where, f"must be a non-empty string, got {_kind(item)}")
                continue
            value, unset = self.expand(item, where)
            if value is None:
                first_unset = first_unset or unset
                consequence = "this key is skipped" if len(raw) > 1 else "requests to this provider will answer 503"
                self.warn(where, f"environment variable {unset} is not set; {consequence}")
            else:
                keys.append(value)
        return tuple(keys), first_unset

    def headers(self, raw: Any, where: str) -> dict[str, str]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.error(where, f"must be a mapping of header names to values, got {_kind(raw)}")
            return {}
        out: dict[str, str] = {}
        for name, value in raw.items():
            if not isinstance(value, (str, int)) or isinstance(value, bool):
                self.error(f"{where}.{name}", "must be a string")
                continue
            expanded, unset = self.expand(str(value), f"{where}.{name}")
            if expanded is None:
                self.error(f"{where}.{name}", f"environment variable {unset} is not set")
                continue
            out[str(name)] = expanded
        return out

    def models(self, raw: Any, providers: dict[str, Provider]) -> dict[str, Model]:
        out: dict[str, Model] = {}
        first_seen: dict[str, int] = {}
        if raw is None or not isinstance(raw, list):
            self.failed.add("models")  # tiers naming models would each repeat this
        if raw is None:
            if "models" not in self.misspelled:
                self.error("models", "required: at least one model")
            return out
        if not isinstance(raw, list):
            self.error("models", f"must be a list, got {_kind(raw)}")
            return out
        unnamed: set[str] = set()
        for i, spec in enumerate(raw):
            here = f"models[{i}]"
            spec = self.mapping(spec, here, _MODEL_FIELDS)
            model_id = self.string(spec, "id", here, required=True)
            deployments = self.deployments(spec, here, providers, model_id or "")
            provider = deployments[0].provider if deployments else None
            if model_id is None:
                unnamed.update(str(v) for k, v in spec.items() if k not in _MODEL_FIELDS and isinstance(v, str))
                continue
            if model_id in first_seen:
                self.error(f"{here}.id", f"duplicate model id {model_id!r} (first at models[{first_seen[model_id]}])")
                continue
            first_seen[model_id] = i
            max_tokens = None
            if "max_tokens" in spec:
                max_tokens = int(self.number(spec, "max_tokens", here, 4096, integer=True))
            created = int(self.number(spec, "created", here, self.created or 1, integer=True))
            out[model_id] = Model(
                id=model_id,
                provider=provider or "",
                upstream=deployments[0].upstream if deployments else model_id,
                owned_by=self.string(spec, "owned_by", here) or (provider or "gateway"),
                created=created,
                max_tokens=max_tokens,
                deployments=tuple(deployments),
            )
        self.unnamed_models = frozenset(unnamed)
        return out

    def deployments(
        self, spec: dict[str, Any], here: str, providers: dict[str, Provider], model_id: str
    ) -> list[Deployment]:
        """`provider` + `upstream` is shorthand for a single deployment."""
        if "deployments" in spec:
            if "provider" in spec or "upstream" in spec:
                self.error(here, "give either 'provider' (and 'upstream') or 'deployments', not both")
            raw = spec["deployments"]
            if not isinstance(raw, list) or not raw:
                self.error(f"{here}.deployments", "must be a non-empty list")
                return []
        else:
            raw = [{"provider": spec.get("provider"), "upstream": spec.get("upstream")}]
        out = []
        for j, item in enumerate(raw):
            where = f"{here}.deployments[{j}]" if "deployments" in spec else here
            item = self.mapping(item, where, ("provider", "upstream", "weight", "priority"))
            provider = self.string(item, "provider", where, required=True)
            if provider is not None and provider not in providers:
                if "providers" not in self.failed:
                    self.error(f"{where}.provider", f"unknown provider {provider!r}{did_you_mean(provider, providers)}")
                provider = None
            weight = self.number(item, "weight", where, 1.0)
            priority = int(self.number(item, "priority", where, 0, integer=True, zero=True))
            if provider is not None:
                upstream = self.string(item, "upstream", where) or model_id
                out.append(Deployment(provider=provider, upstream=upstream, weight=weight, priority=priority))
        return out
