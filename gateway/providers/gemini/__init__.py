"""Google Gemini (Developer API, v1beta `generateContent`) behind the OpenAI contract.

Requests go to `{base_url}/v1beta/models/{upstream}:generateContent`, or
`:streamGenerateContent?alt=sse` for streams, and `:batchEmbedContents` for
embeddings.  The key travels only in the `x-goog-api-key` header, never in a URL
that a proxy or log could keep.

Translation choices worth knowing (the rest is a plain field-by-field mapping):

* System text: every `system`/`developer` message, wherever it stands, becomes one
  part of `systemInstruction`, in order.  A request with nothing but system text
  sends it as the user turn instead, since Gemini requires `contents`.
* Images: a data URL becomes `inlineData`; an http(s) URL becomes
  `fileData {fileUri, mimeType}` (MIME type guessed from the URL's extension when it
  has one).  The adapter is sans-IO, so it never downloads anything itself: Gemini
  fetches public URLs on its side (2.5 and later models).  An image Gemini cannot
  fetch comes back as Google's own 400, which the client sees.
* Tool results: Gemini needs the function *name* in `functionResponse`; it is
  recovered from the earlier assistant tool call with the same `tool_call_id`, and
  the response is always a JSON object (a JSON-object result is sent as is,
  anything else as `{"result": "<text>"}`).
* Thought signatures (Gemini 2.5/3): a `thoughtSignature` on a `functionCall` part
  must come back on that call in the next request.  OpenAI's format has no slot for
  it, so it rides inside the tool call id we hand out:
  `call_<24 alphanumerics>` + `__ts_` + the signature in URL-safe base64 without
  padding (Google sends standard base64; only `+`, `/` and the padding change, so
  the round trip is exact).  The alphabet stays within `[A-Za-z0-9_-]`, so the id
  is valid wherever tool ids are restricted.  Nothing is stored on the gateway.
  Other upstreams get such ids in a short form without the signature (tool_ids.py).
* Calls Gemini did not sign (another provider's, in a conversation that switched
  model; or a client that rewrote the id): Gemini 3 refuses a model turn whose
  first `functionCall` has no signature, so that part gets Google's documented
  placeholder `skip_thought_signature_validator` (dialects.md C6).  Only the first
  call of an assistant message: Gemini signs only the first of parallel calls, and
  its own round trips stay byte for byte.  Older models need no signature.
* `reasoning_effort`: Gemini 3 (`gemini-3*`) gets `thinkingLevel` - `none`,
  `minimal`, `low` -> LOW; `medium` (OpenAI's default), `high`, `xhigh`, `max` ->
  HIGH (Gemini 3's default), the two levels every Gemini 3 model accepts.  Older
  models get `thinkingBudget`: none 0, minimal 512, low 1024, medium 8192, high and
  above 24576.  Except for `none`, `includeThoughts` is on and thought summaries
  come back as `reasoning_content`.  Without `reasoning_effort` the model default
  applies and thoughts are not returned.
* Finish reasons: STOP -> `stop`, or `tool_calls` when the choice called a function;
  MAX_TOKENS -> `length`; safety-like reasons -> `content_filter`; reasons that mean
  the answer is broken (MALFORMED_FUNCTION_CALL, ...) -> an error, never an empty
  success.  A blocked prompt becomes a `content_filter` choice whose `refusal` says
  why.
* Usage: prompt = promptTokenCount (+ toolUsePromptTokenCount), completion =
  candidates + thoughts, reasoning = thoughts, cached = cachedContentTokenCount.
* Embeddings: Gemini's batch endpoint reports no token counts (newer versions may
  send `usageMetadata`, used when present), so `prompt_tokens` is then estimated
  as one token per 4 UTF-8 bytes of input, at least 1 per input.

Modules: request.py (the `GenerateContentRequest`: contents, parts, tools),
generation.py (`generationConfig`: sampling, stop, n, logprobs, JSON mode,
thinking), schema.py (JSON Schema -> Gemini's `Schema`), signatures.py (tool
call ids that carry the thought signature), response.py (a response ->
choices, finish reasons, usage), stream.py (events -> chunks), errors.py
(Google's error bodies); here: the adapter, embeddings included.
"""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Mapping
from typing import Any, Final

import orjson

from gateway.errors import GatewayError, InvalidRequest, UpstreamError
from gateway.providers.base import Adapter, Json, Reply, Route, StreamTranslator, UpstreamRequest
from gateway.providers.gemini.errors import _RPC_STATUS, _retry_delay, _status_of
from gateway.providers.gemini.request import gemini_request
from gateway.providers.gemini.response import _block_reason, _blocked_message, _candidates, _choice, _count, _usage
from gateway.providers.gemini.schema import clean_schema
from gateway.providers.gemini.signatures import new_tool_call_id, signature_of
from gateway.providers.gemini.stream import _GeminiStream
from gateway.providers.messages import reject_unsupported

__all__ = ["GeminiAdapter", "clean_schema", "gemini_request", "new_tool_call_id", "signature_of"]

_EMBEDDING_FIELDS: Final = ("model", "input", "encoding_format", "dimensions")


class GeminiAdapter(Adapter):
    kind = "gemini"

    # -- requests --------------------------------------------------------------------------
    def _url(self, upstream: str, method: str) -> str:
        base = self.provider.base_url.removesuffix("/v1beta")
        return f"{base}/v1beta/models/{upstream.removeprefix('models/')}:{method}"

    def _request(self, url: str, body: Json) -> UpstreamRequest:
        headers = {"Content-Type": "application/json", **self.provider.headers}
        if self.provider.api_key:
            headers["x-goog-api-key"] = self.provider.api_key
        return UpstreamRequest(url, headers, orjson.dumps(body))

    def chat_request(self, body: Json, route: Route, stream: bool) -> UpstreamRequest:
        request = gemini_request(body, route.model.upstream)
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return self._request(self._url(route.model.upstream, method), request)

    # -- responses -------------------------------------------------------------------------
    def chat_response(self, data: bytes, route: Route, reply: Reply) -> Json:
        response = self.parse_json(data)
        if isinstance(response.get("error"), dict):
            raise self.error_from_body(_status_of(response["error"]), response, {})
        if isinstance(response.get("responseId"), str) and response["responseId"]:
            reply.upstream_id = response["responseId"]  # Google's id, for the usage row
        usage = _usage(response.get("usageMetadata"))
        candidates = _candidates(response)
        blocked = _block_reason(response)
        if not candidates:
            if blocked is None:
                raise UpstreamError(f"The {self.provider.name} provider returned no candidates.")
            message = {"role": "assistant", "content": None, "refusal": _blocked_message(blocked)}
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "content_filter"}
            return reply.completion([choice], usage)
        choices = [_choice(candidate, position) for position, candidate in enumerate(candidates)]
        return reply.completion(sorted(choices, key=lambda c: c["index"]), usage)

    def stream_translator(self, route: Route, reply: Reply) -> StreamTranslator:
        return _GeminiStream(reply, self)

    # -- embeddings ------------------------------------------------------------------------
    def embeddings_request(self, body: Json, route: Route) -> UpstreamRequest:
        reject_unsupported(body, "Gemini", _EMBEDDING_FIELDS, ("user",))
        upstream = route.model.upstream.removeprefix("models/")
        extra: Json = {}
        dimensions = body.get("dimensions")
        if dimensions is not None:
            if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1:
                raise InvalidRequest(
                    "'dimensions' must be a positive integer.", param="dimensions", code="invalid_value"
                )
            extra["outputDimensionality"] = dimensions
        requests = [
            {"model": f"models/{upstream}", "content": {"parts": [{"text": text}]}, **extra}
            for text in _embedding_inputs(body.get("input"))
        ]
        return self._request(self._url(upstream, "batchEmbedContents"), {"requests": requests})

    def embeddings_response(self, data: bytes, body: Json, route: Route) -> Json:
        result = self.parse_json(data)
        inputs = _embedding_inputs(body.get("input"))
        embeddings = result.get("embeddings")
        if not isinstance(embeddings, list) or len(embeddings) != len(inputs):
            raise UpstreamError(f"The {self.provider.name} provider returned no embedding for some inputs.")
        as_base64 = body.get("encoding_format") == "base64"
        items = []
        for i, embedding in enumerate(embeddings):
            values = embedding.get("values") if isinstance(embedding, dict) else None
            if not isinstance(values, list):
                raise UpstreamError(f"The {self.provider.name} provider returned an embedding without values.")
            vector: Any = _float32_base64(values) if as_base64 else values
            items.append({"object": "embedding", "index": i, "embedding": vector})
        prompt = _count(result.get("usageMetadata"), "promptTokenCount") or sum(
            max(1, math.ceil(len(text.encode()) / 4)) for text in inputs
        )
        return {
            "object": "list",
            "data": items,
            "model": route.model.id,
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
        }

    # -- errors ----------------------------------------------------------------------------
    def error_from_body(self, status: int, body: Any, headers: Mapping[str, str]) -> GatewayError:
        """Map Google's `{error: {code, message, status, details}}` by its RPC status.

        The RPC status says more than the HTTP code: an invalid key is a 400
        INVALID_ARGUMENT whose ErrorInfo reason is API_KEY_INVALID, and that is the
        operator's problem (502), not the caller's."""
        if isinstance(body, list) and body and isinstance(body[0], dict):
            body = body[0]  # a non-SSE stream answers errors as a one-element array
        err = body.get("error") if isinstance(body, dict) else None
        if not isinstance(err, dict):
            return self.upstream_error(status, "", retry_after=headers.get("Retry-After"))
        rpc = err.get("status") if isinstance(err.get("status"), str) else ""
        message = str(err.get("message") or "")
        details = [d for d in err.get("details") or [] if isinstance(d, dict)]
        reasons = {d.get("reason") for d in details if str(d.get("@type", "")).endswith("ErrorInfo")}
        if "API_KEY_INVALID" in reasons or rpc == "UNAUTHENTICATED":
            return self.upstream_error(401, message)
        if rpc == "PERMISSION_DENIED":
            return self.upstream_error(403, message)
        if rpc == "FAILED_PRECONDITION":  # billing, region: the operator's to fix
            return UpstreamError(f"The {self.provider.name} provider refused the request: {self.scrub(message)}")
        mapped = _RPC_STATUS.get(rpc, status)
        retry_after = _retry_delay(details) if mapped == 429 else None
        return self.upstream_error(mapped, message, retry_after=retry_after or headers.get("Retry-After"))


# -- embeddings --------------------------------------------------------------------------


def _embedding_inputs(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    raise InvalidRequest(
        "Gemini embedding models take text only: 'input' must be a string or an array of strings.",
        param="input",
        code="invalid_value",
    )


def _float32_base64(values: list[Any]) -> str:
    """What OpenAI sends for encoding_format=base64: little-endian float32s, base64-encoded."""
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode("ascii")
