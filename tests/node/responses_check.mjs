// A streamed function-tool loop over the Responses API with the official openai Node SDK
// (tests/test_responses_node.py): turn 1 streams a function call, turn 2 streams the
// answer to its output, chained with previous_response_id.  Prints one JSON report:
// every event each stream yielded and each stream's finalResponse().
// Usage: node responses_check.mjs <base_url> <key> <json: the create body of turn 1> <tool output>
import OpenAI from "openai";

const [baseURL, apiKey, bodyJson, toolOutput] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
const body = JSON.parse(bodyJson);

async function turn(params) {
  const stream = client.responses.stream(params);
  // The SDK's accumulator mutates the objects of past events (the snapshot IS the
  // response.created event's response; items and parts are pushed, then appended to),
  // so each event is copied the moment it is emitted, right after its own accumulation.
  const events = [];
  stream.on("event", (event) => events.push(structuredClone(event)));
  let yielded = 0;
  for await (const _ of stream) yielded += 1;
  const final = await stream.finalResponse();
  return { events, yielded, final };
}

const first = await turn(body);
const calls = first.final.output.filter((item) => item.type === "function_call");
const second = await turn({
  ...body,
  previous_response_id: first.final.id,
  input: calls.map((call) => ({ type: "function_call_output", call_id: call.call_id, output: toolOutput })),
});
console.log(JSON.stringify({ turns: [first, second] }));
