"""Who may use what.  `allows` is the single rule behind both `/v1/models` and every
call, so what a tier lists and what it may call can never disagree."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import ApiKey, Config, Model, Tier
from gateway.errors import NotFound, PermissionDenied


@dataclass(frozen=True, slots=True)
class Caller:
    key: ApiKey
    tier: Tier


def allows(tier: Tier, model: Model) -> bool:
    return model.id in tier.models


def visible_models(config: Config, tier: Tier) -> list[Model]:
    return [m for m in config.models.values() if allows(tier, m)]


def resolve(config: Config, caller: Caller, model_id: str) -> Model:
    """The model `model_id` names, or 404 (not configured) / 403 (configured, outside the
    caller's tier: the message names the tier, so the client knows an upgrade would
    help).  Every call and `GET /v1/models/{id}` ask this one function, so they answer
    alike.  Where the model is served is the balancer's choice (`Balancer.plan`)."""
    model = config.models.get(model_id)
    if model is None:
        raise NotFound(f"The model `{model_id}` does not exist or you do not have access to it.", param="model")
    if not allows(caller.tier, model):
        raise PermissionDenied(
            f"The model `{model_id}` is not included in your tier '{caller.tier.name}'; upgrade your plan to use it.",
            param="model",
        )
    return model
