"""OpenAI sampling and output parameters -> Gemini's `generationConfig`
(temperature, top_p/top_k, max tokens, stop, n, seed, penalties, logprobs),
`response_format` -> JSON output with a cleaned schema, `reasoning_effort` ->
`thinkingConfig` (levels for Gemini 3, budgets before)."""

from __future__ import annotations

from typing import Any, Final

from gateway.dialects import fields
from gateway.errors import InvalidRequest
from gateway.providers.base import Json
from gateway.providers.gemini.schema import clean_schema
from gateway.providers.messages import max_output_tokens, number, stop_list

_MAX_STOP: Final = 5  # Gemini's limit on stopSequences
_EFFORTS: Final = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
_LEVELS: Final = {"none": "LOW", "minimal": "LOW", "low": "LOW"}  # everything else: HIGH
_BUDGETS: Final = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192}  # everything else: 24576
_MAX_BUDGET: Final = 24576  # the largest budget every 2.5 model accepts


def _generation_config(body: Json, upstream: str) -> Json:
    config: Json = {}

    def put(key: str, value: Any) -> None:
        if value is not None:
            config[key] = value

    put("temperature", number(body, "temperature", 0, 2))
    put("topP", number(body, "top_p", 0, 1))
    put("topK", _integer(body, "top_k", 1))
    put("maxOutputTokens", max_output_tokens(body))
    stop = stop_list(body)
    if stop:
        if len(stop) > _MAX_STOP:
            raise InvalidRequest(
                f"Gemini accepts at most {_MAX_STOP} stop sequences.", param="stop", code="invalid_value"
            )
        config["stopSequences"] = stop
    n = _integer(body, "n", 1)
    if n is not None and n > 1:
        config["candidateCount"] = n
    put("seed", _integer(body, "seed", None))
    put("presencePenalty", number(body, "presence_penalty", -2, 2))
    put("frequencyPenalty", number(body, "frequency_penalty", -2, 2))
    if fields.boolean(body, "logprobs", "logprobs"):
        config["responseLogprobs"] = True
        top = _integer(body, "top_logprobs", 0)
        if top:
            config["logprobs"] = top
    _response_format(body.get("response_format"), config)
    effort = fields.choice(body, "reasoning_effort", "reasoning_effort", _EFFORTS)
    if effort is not None:
        config["thinkingConfig"] = _thinking(effort, upstream)
    return config


def _integer(body: Json, name: str, low: int | None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
        bound = f" >= {low}" if low is not None else ""
        raise InvalidRequest(f"'{name}' must be an integer{bound}.", param=name, code="invalid_value")
    return value


def _response_format(spec: Any, config: Json) -> None:
    if spec is None:
        return
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind == "text":
        return
    if kind == "json_object":
        config["responseMimeType"] = "application/json"
        return
    if kind == "json_schema" and isinstance(spec.get("json_schema"), dict):
        config["responseMimeType"] = "application/json"
        schema = spec["json_schema"].get("schema")
        if schema is not None:
            config["responseSchema"] = clean_schema(schema, "response_format.json_schema.schema")
        return
    raise InvalidRequest(
        "'response_format' must be of type text, json_object or json_schema (with a json_schema object).",
        param="response_format",
        code="invalid_value",
    )


def _gemini3(upstream: str) -> bool:
    """Gemini 3 models think in levels and insist on signed function calls."""
    return upstream.removeprefix("models/").startswith("gemini-3")


def _thinking(effort: str, upstream: str) -> Json:
    thinking: Json = {"includeThoughts": effort != "none"}
    if _gemini3(upstream):
        thinking["thinkingLevel"] = _LEVELS.get(effort, "HIGH")
    else:
        thinking["thinkingBudget"] = _BUDGETS.get(effort, _MAX_BUDGET)
    return thinking
