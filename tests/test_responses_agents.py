"""Acceptance (issue 12): the OpenAI Agents SDK (`openai-agents`) runs an agent with
its default model (the Responses API) and one `@function_tool` through the gateway,
streamed (`Runner.run_streamed`) and not (`Runner.run`), the history replayed by the
SDK or chained with `previous_response_id`, on every provider kind (Claude with
thinking on).  The fake upstream is scripted to call the tool and then answer; every
Response and event the SDK received is validated raw against OpenAI's schemas, and
turn 2 is checked on what the upstream received."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agents import (
    Agent,
    ModelSettings,
    Runner,
    function_tool,
    set_default_openai_api,
    set_default_openai_client,
    set_tracing_disabled,
)
from fakes import Reply, fixture_json, json_reply
from openai.types.shared import Reasoning
from responses_e2e import (
    CALLS,
    MODELS,
    QUESTION,
    TOOL_OUTPUT,
    Stack,
    check_upstream_turn_two,
    checked_response,
    checked_stream,
    function_call,
    openai_stream_of,
    start_stack,
    text_reply,
    tool_call_reply,
)

ANSWER = "It is sunny in Florence."


@pytest.fixture
def agents_sdk() -> Iterator[None]:
    set_tracing_disabled(True)  # no trace export to OpenAI from a test
    set_default_openai_api("responses")  # the default, said out loud
    yield


@pytest.fixture
async def stack(fake_server: Any, start_gateway: Any, tmp_path: Path, agents_sdk: None) -> Stack:
    return await start_stack(fake_server, start_gateway, tmp_path)


def weather_agent(kind: str, calls: list[str]) -> Agent[Any]:
    @function_tool
    def weather(location: str) -> str:
        """Get weather information for a location.

        Args:
            location: the city
        """
        calls.append(location)
        return TOOL_OUTPUT

    settings = ModelSettings(reasoning=Reasoning(effort="medium")) if kind == "ant" else ModelSettings()
    return Agent(name="forecaster", model=MODELS[kind], tools=[weather], model_settings=settings)


def tool_call(kind: str, stream: bool) -> tuple[Reply, bool]:
    """The recorded answer calling `weather(location=...)`, and the `stream` key of
    `CALLS` it matches (OpenAI's recorded stream calls another tool: the recorded
    non-streamed call is streamed instead)."""
    if kind == "oai" and stream:
        return openai_stream_of(fixture_json("openai_chat_completion_tool_calls.json")), False
    if kind == "oai":
        return json_reply(fixture_json("openai_chat_completion_tool_calls.json")), False
    return tool_call_reply(kind, stream), stream


@pytest.mark.parametrize("chained", [False, True], ids=["replayed", "previous_response_id"])
@pytest.mark.parametrize("stream", [False, True], ids=["run", "run_streamed"])
@pytest.mark.parametrize("kind", list(MODELS))
async def test_agent_calls_the_tool_then_answers(stack: Stack, kind: str, stream: bool, chained: bool) -> None:
    fake = stack.fakes[kind]
    reply, recorded = tool_call(kind, stream)
    fake.script(reply, text_reply(kind, ANSWER, stream))
    client = stack.client()
    set_default_openai_client(client, use_for_tracing=False)
    calls: list[str] = []
    agent = weather_agent(kind, calls)
    options = {"auto_previous_response_id": True} if chained else {}
    if stream:
        result: Any = Runner.run_streamed(agent, QUESTION, **options)
        kinds = [event.type async for event in result.stream_events()]
        assert "raw_response_event" in kinds and "run_item_stream_event" in kinds
    else:
        result = await Runner.run(agent, QUESTION, **options)
    assert result.final_output == ANSWER
    assert calls == [CALLS[kind, recorded][1]["location"]]  # the tool ran, once, with the model's arguments

    # what the gateway sent the SDK: valid Responses, the function call then the answer
    exchanges = [e for e in client.tap.exchanges if e.path.endswith("/responses")]
    assert len(exchanges) == 2
    finals = [checked_stream(e)[1] if stream else checked_response(e) for e in exchanges]
    assert [item["type"] for item in finals[1]["output"]] == ["message"]
    if chained:
        assert finals[1]["previous_response_id"] == finals[0]["id"]

    # what the upstream received on turn 2: the whole conversation, provider state intact
    assert len(fake.requests) == 2
    check_upstream_turn_two(stack, kind, recorded, function_call(kind, recorded, finals[0]))
