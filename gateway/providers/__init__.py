"""The registry of provider adapters, by the `kind` a provider has in the YAML."""

from __future__ import annotations

from gateway.providers.anthropic import AnthropicAdapter
from gateway.providers.base import Adapter
from gateway.providers.gemini import GeminiAdapter
from gateway.providers.openai import OpenAIAdapter

ADAPTERS: dict[str, type[Adapter]] = {
    OpenAIAdapter.kind: OpenAIAdapter,
    AnthropicAdapter.kind: AnthropicAdapter,
    GeminiAdapter.kind: GeminiAdapter,
}
