"""The OpenAI Responses API (`/v1/responses`) as an inbound dialect, sans-IO.

- `request.to_hub(body, history, resolve_item)`: a create body (plus the stored
  items of `previous_response_id`) -> the hub Chat Completions body, or a 400
  naming the field; `items.input_items(body, resolve_item)`: the input as
  normalised items with ids (for `GET .../input_items` and the store).
- `context.ResponseContext`: the response id, time, model and echoed settings.
- `render.render_response(completion, ctx)`: a hub completion -> a Response.
- `stream.ResponseStream(ctx)`: hub chunks -> Responses events; `stream.frame`.

Provider state travels in reasoning items through `gateway.dialects.carry`.
"""
