"""The Anthropic Messages API (`/v1/messages`) as an inbound dialect, sans-IO.

Serves Messages clients (the anthropic SDKs, Claude Code) in front of upstreams
that do not speak Messages: a model served by Anthropic gets the client's bytes
as they are and never comes here.

- request.py: a create / count_tokens body -> the hub (Chat Completions) body;
  content.py: the `messages` array; fields.py: typed reads, 400 naming the field.
- render.py: hub completion -> Message; errors, models list in Anthropic's shape.
- stream.py: hub chunks -> Messages events (`MessageStream`), `frame`.
- state.py: the envelope in a thinking block's `signature` that carries provider
  state (hub `reasoning_signature`, original tool ids) across turns.
"""
