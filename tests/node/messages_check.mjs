// Drives a running gateway's /v1/messages with the official Anthropic TypeScript SDK:
// for each model, one streamed tool loop (turn 1 calls `weather`, turn 2 sends the
// tool_result back with the assistant content as the SDK accumulated it).
// Prints one JSON report.  Usage: node messages_check.mjs <gateway root> <key> <model>...
import Anthropic from "@anthropic-ai/sdk";

const [baseURL, apiKey, ...models] = process.argv.slice(2);
const client = new Anthropic({ baseURL, apiKey, maxRetries: 0 });
const tools = [{
  name: "weather",
  description: "Get weather information for a location",
  input_schema: { type: "object", properties: { location: { type: "string" } }, required: ["location"] },
}];
const thinking = { type: "enabled", budget_tokens: 2048 };

async function streamed(body) {
  const stream = client.messages.stream(body);
  const events = [];
  stream.on("streamEvent", (event) => events.push(event.type));
  const message = await stream.finalMessage();
  return { message, events };
}

const report = {};
for (const model of models) {
  const messages = [{ role: "user", content: "What's the weather in Florence, Italy?" }];
  const first = await streamed({ model, max_tokens: 4096, tools, thinking, messages });
  const call = first.message.content.find((block) => block.type === "tool_use");
  messages.push({ role: "assistant", content: first.message.content });
  messages.push({ role: "user", content: [{ type: "tool_result", tool_use_id: call.id, content: "sunny, 24C" }] });
  const second = await streamed({ model, max_tokens: 4096, tools, thinking, messages });
  report[model] = {
    first: {
      stopReason: first.message.stop_reason,
      blocks: first.message.content.map((block) => block.type),
      call: { id: call.id, name: call.name, input: call.input },
      events: first.events,
    },
    second: {
      stopReason: second.message.stop_reason,
      text: second.message.content.filter((block) => block.type === "text").map((block) => block.text).join(""),
      events: second.events,
    },
  };
}
console.log(JSON.stringify(report));
