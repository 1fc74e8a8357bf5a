// Drives a running gateway with the official openai Node SDK and prints one JSON report.
// Usage: node sdk_check.mjs <base_url> <pro_key> <free_key>
import OpenAI from "openai";

const [baseURL, proKey, freeKey] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: proKey, maxRetries: 0 });
const report = {};
const messages = [{ role: "user", content: "Hello" }];

report.models = (await client.models.list()).data.map((m) => m.id);

const completion = await client.chat.completions.create({ model: "oai-small", messages });
report.chat = { model: completion.model, content: completion.choices[0].message.content };

const stream = await client.chat.completions.create({
  model: "oai-small", messages, stream: true, stream_options: { include_usage: true },
});
let text = "";
let usage = null;
for await (const chunk of stream) {
  if (chunk.choices.length) text += chunk.choices[0].delta.content ?? "";
  if (chunk.usage) usage = chunk.usage.total_tokens;
}
report.stream = { text, usage };

const tools = await client.chat.completions.create({ model: "oai-small", messages, stream: true });
const calls = {};
for await (const chunk of tools) {
  for (const tc of chunk.choices[0]?.delta?.tool_calls ?? []) {
    calls[tc.index] ??= { name: "", args: "" };
    calls[tc.index].name += tc.function?.name ?? "";
    calls[tc.index].args += tc.function?.arguments ?? "";
  }
}
report.tools = Object.values(calls).map((c) => ({ name: c.name, args: JSON.parse(c.args) }));

async function errorOf(fn) {
  try { await fn(); return null; } catch (e) { return { cls: e.constructor.name, status: e.status, code: e.code ?? null }; }
}
report.errors = {
  unknownKey: await errorOf(() => new OpenAI({ baseURL, apiKey: "sk-wrong", maxRetries: 0 }).models.list()),
  unknownModel: await errorOf(() => client.chat.completions.create({ model: "nope", messages })),
  outsideTier: await errorOf(() =>
    new OpenAI({ baseURL, apiKey: freeKey, maxRetries: 0 }).chat.completions.create({ model: "oai-large", messages })),
  emptyMessages: await errorOf(() => client.chat.completions.create({ model: "oai-small", messages: [] })),
};
console.log(JSON.stringify(report));
