// The official `openai` npm package, unchanged, as a client of chatgate's /v1. Run by
// tests/api/v1_sdk.rs with CHATGATE_BASE_URL (…/v1) and CHATGATE_KEY (a client key); it
// prints what the SDK made of each call as one JSON object, which the Rust test checks.
import OpenAI from 'openai';

const baseURL = process.env.CHATGATE_BASE_URL;
const apiKey = process.env.CHATGATE_KEY;
if (!baseURL || !apiKey) {
  console.error('set CHATGATE_BASE_URL and CHATGATE_KEY');
  process.exit(2);
}
// No retries: a 429 must reach the caller as it came.
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
const model = 'mock-model';
const user = (content) => [{ role: 'user', content }];

/** What the SDK threw, or null. */
async function caught(call) {
  try {
    await call();
    return null;
  } catch (e) {
    return {
      class: e.constructor.name,
      status: e.status ?? null,
      message: e.message,
      code: e.code ?? null,
      type: e.type ?? null,
      retryAfter: e.headers?.get?.('retry-after') ?? null,
      isApiError: e instanceof OpenAI.APIError,
      isRateLimit: e instanceof OpenAI.RateLimitError,
      isBadRequest: e instanceof OpenAI.BadRequestError,
      isAuthentication: e instanceof OpenAI.AuthenticationError,
    };
  }
}

const out = {};

// Streamed, with usage.
{
  const stream = await client.chat.completions.create({
    model,
    messages: user('hello from the sdk [mock:words=3]'),
    stream: true,
    stream_options: { include_usage: true },
  });
  const ids = new Set();
  let text = '';
  let finish = null;
  let usage = null;
  let roles = [];
  for await (const chunk of stream) {
    ids.add(chunk.id);
    if (chunk.usage) usage = chunk.usage;
    for (const choice of chunk.choices) {
      if (choice.delta.role) roles.push(choice.delta.role);
      text += choice.delta.content ?? '';
      if (choice.finish_reason) finish = choice.finish_reason;
    }
  }
  out.streamed = { text, ids: [...ids], finish, usage, roles };
}

// Not streamed.
{
  const completion = await client.chat.completions.create({ model, messages: user('all at once') });
  const choice = completion.choices[0];
  out.completion = {
    object: completion.object,
    text: choice.message.content,
    role: choice.message.role,
    finish: choice.finish_reason,
    usage: completion.usage,
  };
}

// Tool calls, reassembled by the SDK's own stream helper.
{
  const tools = [0, 1].map((i) => ({
    type: 'function',
    function: { name: `lookup_${i}`, parameters: { type: 'object', properties: {} } },
  }));
  const runner = client.chat.completions.stream({ model, messages: user('weather [mock:tool-calls=2]'), tools });
  const final = await runner.finalChatCompletion();
  const message = final.choices[0].message;
  out.tools = {
    finish: final.choices[0].finish_reason,
    content: message.content,
    calls: message.tool_calls.map((c) => ({ id: c.id, name: c.function.name, arguments: c.function.arguments })),
  };
}

// The model list.
{
  const models = [];
  for await (const m of client.models.list()) models.push({ id: m.id, object: m.object, owned_by: m.owned_by });
  out.models = models;
}

// Typed errors. The 429 asks for a wait longer than any retry budget: it reaches the caller
// at once.
out.rateLimited = await caught(() =>
  client.chat.completions.create({ model, messages: user('[mock:status=429] [mock:retry-after=30]'), stream: true }),
);
out.badRequest = await caught(() => client.chat.completions.create({ model, messages: user('[mock:status=400]') }));
out.refusedN = await caught(() => client.chat.completions.create({ model, messages: user('two'), n: 2 }));
out.unauthorized = await caught(() =>
  new OpenAI({ baseURL, apiKey: 'sk-not-a-client-key', maxRetries: 0 }).models.list(),
);
out.midStream = await caught(async () => {
  const stream = await client.chat.completions.create({
    model,
    messages: user('partial [mock:words=5] [mock:error-after=2]'),
    stream: true,
  });
  for await (const _chunk of stream) {
    // read to the error
  }
});

console.log(JSON.stringify(out));
