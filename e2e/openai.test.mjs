// End-to-end tests: a real `lokal serve` driven by the official `openai` npm client.
// Run: LOKAL_BIN=build/src/lokal LOKAL_TEST_DATA=../shared node --test e2e/openai.test.mjs
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { checkPrerequisites, startServer, waitIdle, MODEL_ID, GET_WEATHER, PARIS } from './server.mjs';

checkPrerequisites(); // fails the file with a clear message (run scripts/setup.sh, LOKAL_BIN, model)
const { default: OpenAI } = await import('openai');

const T = { timeout: 30000 };
const FRANCE = [{ role: 'user', content: 'What is the capital of France?' }];
const WEATHER = [{ role: 'user', content: "What's the weather in Tokyo?" }];
const GET_TIME = {
  type: 'function',
  function: {
    name: 'get_time',
    description: 'Get the current local time in a city',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
  },
};
const THINK = [
  { role: 'system', content: 'Think step by step before you answer.' },
  { role: 'user', content: 'What is the capital of France?' },
];
const ANNA = [{ role: 'user', content: 'Reply in JSON with the name and age of Anna, who is 7.' }];
const PERSON_SCHEMA = {
  type: 'object',
  properties: { name: { type: 'string' }, age: { type: 'integer' } },
  required: ['name', 'age'],
};

// Reads a whole chat stream; checks the invariants every stream must keep and returns its parts.
async function collectChatStream(stream) {
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  assert.ok(chunks.length > 0, 'the stream has chunks');
  const id = chunks[0].id;
  let content = '';
  let reasoning = '';
  const finishReasons = [];
  for (const c of chunks) {
    assert.equal(c.object, 'chat.completion.chunk');
    assert.equal(c.id, id, 'every chunk has the same id');
    assert.equal(c.model, MODEL_ID);
    for (const ch of c.choices) {
      assert.equal(ch.index, 0);
      if (typeof ch.delta?.content === 'string') content += ch.delta.content;
      if (typeof ch.delta?.reasoning_content === 'string') reasoning += ch.delta.reasoning_content;
      if (ch.finish_reason != null) finishReasons.push(ch.finish_reason);
    }
  }
  assert.equal(chunks[0].choices[0]?.delta?.role, 'assistant', 'the first delta carries role: assistant');
  assert.equal(finishReasons.length, 1, `exactly one non-null finish_reason, got ${JSON.stringify(finishReasons)}`);
  return { chunks, content, reasoning, finishReason: finishReasons[0] };
}

function assertUsage(usage) {
  assert.ok(usage, 'usage is present');
  assert.ok(Number.isInteger(usage.prompt_tokens) && usage.prompt_tokens > 0, `prompt_tokens: ${usage.prompt_tokens}`);
  assert.ok(Number.isInteger(usage.completion_tokens) && usage.completion_tokens > 0, `completion_tokens: ${usage.completion_tokens}`);
  assert.equal(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens);
}

function assertWeatherCall(call) {
  assert.ok(call, 'a tool call');
  assert.equal(call.type, 'function');
  assert.equal(typeof call.id, 'string');
  assert.ok(call.id.length > 0, 'the tool call has an id');
  assert.equal(call.function.name, 'get_weather');
  assert.equal(typeof call.function.arguments, 'string', 'arguments is a JSON string');
  const args = JSON.parse(call.function.arguments);
  assert.equal(typeof args.city, 'string', `city is a string: ${call.function.arguments}`);
}

async function metric(server, name) {
  const text = await (await fetch(server.url('/metrics'))).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  assert.ok(line, `metric ${name} in /metrics`);
  return Number(line.split(' ')[1]);
}

describe('openai client against lokal serve', () => {
  let server;
  let client;
  let parisAnswer; // the non-stream answer, which the streams must equal

  before(async () => {
    server = await startServer();
    client = new OpenAI({ baseURL: server.url('/v1'), apiKey: 'x', maxRetries: 0, timeout: 20000 });
  });
  after(() => server?.kill());

  test('chat.completions.create: answer, usage, finish_reason', T, async () => {
    const r = await client.chat.completions.create({ model: MODEL_ID, messages: FRANCE, temperature: 0 });
    assert.equal(r.object, 'chat.completion');
    assert.equal(r.model, MODEL_ID);
    assert.equal(r.choices.length, 1);
    const choice = r.choices[0];
    assert.equal(choice.message.role, 'assistant');
    assert.match(choice.message.content, /Paris/);
    assert.equal(choice.message.content, PARIS);
    assert.equal(choice.finish_reason, 'stop');
    assertUsage(r.usage);
    assert.equal(typeof r.usage.prompt_tokens_details?.cached_tokens, 'number');
    assert.match(r._request_id ?? '', /\S/, 'the SDK sees the x-request-id header');
    parisAnswer = choice.message.content;
  });

  test('chat.completions.create stream: chunks, one finish_reason, include_usage', T, async () => {
    const expected = parisAnswer ?? PARIS;
    const plain = await collectChatStream(
      await client.chat.completions.create({ model: MODEL_ID, messages: FRANCE, temperature: 0, stream: true }),
    );
    assert.equal(plain.content, expected);
    assert.equal(plain.finishReason, 'stop');
    assert.ok(plain.chunks.every((c) => c.usage == null), 'no usage without stream_options.include_usage');

    const withUsage = await collectChatStream(
      await client.chat.completions.create({
        model: MODEL_ID, messages: FRANCE, temperature: 0, stream: true, stream_options: { include_usage: true },
      }),
    );
    assert.equal(withUsage.content, expected);
    const last = withUsage.chunks.at(-1);
    assert.deepEqual(last.choices, [], 'the usage chunk has empty choices');
    assertUsage(last.usage);
    assert.ok(withUsage.chunks.slice(0, -1).every((c) => c.usage == null), 'only the last chunk has usage');

    const helper = client.chat.completions.stream({ model: MODEL_ID, messages: FRANCE, temperature: 0 });
    const final = await helper.finalChatCompletion();
    assert.equal(final.choices[0].message.content, expected);
    assert.equal(final.choices[0].finish_reason, 'stop');
  });

  test('tools: non-stream tool call', T, async () => {
    const r = await client.chat.completions.create({ model: MODEL_ID, messages: WEATHER, tools: [GET_WEATHER], temperature: 0 });
    const choice = r.choices[0];
    assert.equal(choice.finish_reason, 'tool_calls');
    assert.equal(choice.message.content, null);
    assert.equal(choice.message.tool_calls.length, 1);
    assertWeatherCall(choice.message.tool_calls[0]);
  });

  test('tools: stream helper rebuilds tool_calls from deltas', T, async () => {
    const stream = client.chat.completions.stream({ model: MODEL_ID, messages: WEATHER, tools: [GET_WEATHER], temperature: 0 });
    const final = await stream.finalChatCompletion();
    const choice = final.choices[0];
    assert.equal(choice.finish_reason, 'tool_calls');
    assert.equal(choice.message.tool_calls?.length, 1);
    assertWeatherCall(choice.message.tool_calls[0]);
  });

  test("tools: tool_choice 'required' and a named tool_choice", T, async () => {
    // A question no tool answers: 'required' must still produce a call.
    const req = await client.chat.completions.create({
      model: MODEL_ID, messages: FRANCE, tools: [GET_WEATHER], tool_choice: 'required', temperature: 0,
    });
    assert.equal(req.choices[0].finish_reason, 'tool_calls');
    assertWeatherCall(req.choices[0].message.tool_calls?.[0]);

    // A weather question, but the named choice forces get_time.
    const named = await client.chat.completions.create({
      model: MODEL_ID, messages: WEATHER, tools: [GET_WEATHER, GET_TIME],
      tool_choice: { type: 'function', function: { name: 'get_time' } }, temperature: 0,
    });
    const call = named.choices[0].message.tool_calls?.[0];
    assert.equal(named.choices[0].finish_reason, 'tool_calls');
    assert.equal(call?.function.name, 'get_time');
    assert.equal(typeof JSON.parse(call.function.arguments), 'object');

    // 'none' gives text.
    const none = await client.chat.completions.create({
      model: MODEL_ID, messages: FRANCE, tools: [GET_WEATHER], tool_choice: 'none', temperature: 0,
    });
    assert.equal(none.choices[0].finish_reason, 'stop');
    assert.ok(!none.choices[0].message.tool_calls?.length, 'no tool calls with tool_choice none');
    assert.match(none.choices[0].message.content, /\S/);
  });

  test('tools: a full round trip with a role: tool result', T, async () => {
    const first = await client.chat.completions.create({ model: MODEL_ID, messages: WEATHER, tools: [GET_WEATHER], temperature: 0 });
    const assistant = first.choices[0].message;
    const call = assistant.tool_calls?.[0];
    assertWeatherCall(call);
    const second = await client.chat.completions.create({
      model: MODEL_ID,
      tools: [GET_WEATHER],
      temperature: 0,
      messages: [
        ...WEATHER,
        assistant, // as the SDK returned it: content null, tool_calls
        { role: 'tool', tool_call_id: call.id, content: '{"temperature": 21}' },
      ],
    });
    const choice = second.choices[0];
    assert.equal(choice.finish_reason, 'stop');
    assert.equal(typeof choice.message.content, 'string');
    assert.match(choice.message.content, /\S/, 'a non-empty text answer');
    assert.ok(!choice.message.tool_calls?.length, 'no further tool call');
  });

  test('response_format json_schema and json_object', T, async () => {
    const r = await client.chat.completions.create({
      model: MODEL_ID, messages: ANNA, temperature: 0,
      response_format: { type: 'json_schema', json_schema: { name: 'person', schema: PERSON_SCHEMA, strict: true } },
    });
    const obj = JSON.parse(r.choices[0].message.content);
    assert.equal(typeof obj.name, 'string');
    assert.ok(Number.isInteger(obj.age), `age is an integer: ${r.choices[0].message.content}`);

    const j = await client.chat.completions.create({
      model: MODEL_ID, messages: ANNA, temperature: 0, response_format: { type: 'json_object' },
    });
    const parsed = JSON.parse(j.choices[0].message.content);
    assert.equal(typeof parsed, 'object');
    assert.notEqual(parsed, null);
  });

  test('reasoning_content for a thinking answer (non-stream and stream)', T, async () => {
    const r = await client.chat.completions.create({ model: MODEL_ID, messages: THINK, temperature: 0 });
    const msg = r.choices[0].message;
    assert.equal(typeof msg.reasoning_content, 'string', `reasoning_content in ${JSON.stringify(msg)}`);
    assert.match(msg.reasoning_content, /\S/);
    assert.doesNotMatch(msg.content, /<\/?think>/, 'the think block is not left in content');
    assert.match(msg.content, /Paris/);

    const s = await collectChatStream(
      await client.chat.completions.create({ model: MODEL_ID, messages: THINK, temperature: 0, stream: true }),
    );
    assert.equal(s.reasoning, msg.reasoning_content);
    assert.equal(s.content, msg.content);
  });

  test('completions.create (legacy) with logprobs', T, async () => {
    const r = await client.completions.create({ model: MODEL_ID, prompt: 'Once upon a time', max_tokens: 8, logprobs: 2, temperature: 0 });
    assert.equal(r.object, 'text_completion');
    const choice = r.choices[0];
    assert.match(choice.text, /\S/);
    assert.equal(r.usage.completion_tokens, 8);
    assert.equal(choice.finish_reason, 'length');
    const lp = choice.logprobs;
    assert.equal(lp.tokens.length, 8);
    assert.equal(lp.tokens.join(''), choice.text);
    assert.equal(lp.token_logprobs.length, 8);
    assert.ok(lp.token_logprobs.every((x) => typeof x === 'number' && x <= 0));
    assert.equal(lp.top_logprobs.length, 8);
    assert.ok(lp.top_logprobs.every((t) => Object.keys(t).length >= 1 && Object.keys(t).length <= 2));
    assert.equal(lp.text_offset.length, 8);
  });

  test('models.list contains the model', T, async () => {
    const ids = [];
    for await (const m of client.models.list()) ids.push(m.id);
    assert.ok(ids.includes(MODEL_ID), `ids: ${ids}`);
  });

  test('embeddings.create: unit vectors (the SDK asks for base64 and decodes it), one per input', T, async () => {
    const one = await client.embeddings.create({ model: MODEL_ID, input: 'The cat sat on the mat.' });
    const e = one.data[0].embedding;
    assert.equal(e.length, 256);
    const norm = Math.sqrt(e.reduce((a, v) => a + v * v, 0));
    assert.ok(Math.abs(norm - 1) < 1e-4, `norm ${norm}`);
    const many = await client.embeddings.create({ model: MODEL_ID, input: ['A dog.', 'The cat sat on the mat.'], encoding_format: 'float' });
    assert.equal(many.data.length, 2);
    assert.deepEqual(many.data[1].embedding, e);
    assert.notDeepEqual(many.data[0].embedding, e);
    assert.ok(many.usage.prompt_tokens > 0);
  });

  test('errors arrive as typed exceptions', T, async () => {
    await assert.rejects(
      client.chat.completions.create({ model: MODEL_ID, messages: FRANCE, n: 2 }),
      (e) => e instanceof OpenAI.BadRequestError && e.status === 400 && /\bn\b/.test(e.message),
    );
    await assert.rejects(
      client.chat.completions.create({ model: 'no-such-model', messages: FRANCE }),
      (e) => e instanceof OpenAI.NotFoundError && e.status === 404,
    );
    const long = Array.from({ length: 3000 }, (_, i) => `word${i % 50}`).join(' ');
    await assert.rejects(
      client.chat.completions.create({ model: MODEL_ID, messages: [{ role: 'user', content: long }] }),
      (e) => e instanceof OpenAI.BadRequestError && e.status === 400 && /context/.test(e.message),
    );
    // The same on a stream: the error comes before the first chunk, as an exception.
    await assert.rejects(
      (async () => {
        for await (const _ of await client.chat.completions.create({ model: MODEL_ID, messages: [{ role: 'user', content: long }], stream: true }));
      })(),
      (e) => e instanceof OpenAI.BadRequestError && /context/.test(e.message),
    );
  });

  test('8 concurrent streams all complete and are well-formed', T, async () => {
    const story = [{ role: 'user', content: 'Tell me a short story about a cat.' }];
    const runs = Array.from({ length: 8 }, (_, i) => (async () => {
      const s = await collectChatStream(await client.chat.completions.create({
        model: MODEL_ID, stream: true, stream_options: { include_usage: true },
        ...(i % 2 === 0 ? { messages: FRANCE, temperature: 0 } : { messages: story, max_tokens: 48, seed: i }),
      }));
      assertUsage(s.chunks.at(-1).usage);
      return { i, ...s };
    })());
    const results = await Promise.all(runs);
    const ids = new Set(results.map((r) => r.chunks[0].id));
    assert.equal(ids.size, 8, 'distinct ids');
    for (const r of results) {
      assert.match(r.content, /\S/);
      if (r.i % 2 === 0) {
        assert.equal(r.content, parisAnswer ?? PARIS, 'greedy answers are unchanged by batching');
        assert.equal(r.finishReason, 'stop');
      } else {
        assert.ok(['stop', 'length'].includes(r.finishReason));
        assert.ok(r.chunks.at(-1).usage.completion_tokens <= 48);
      }
    }
    await waitIdle(server, 10000);
  });

  test('SIGTERM stops the server with exit code 0', T, async () => {
    await server.stop();
  });
});

describe('openai client with --api-key', () => {
  let server;
  before(async () => {
    server = await startServer(['--api-key', 'secret-key-123456789']);
  });
  after(() => server?.kill());

  test('wrong key → AuthenticationError 401, right key works', T, async () => {
    const wrong = new OpenAI({ baseURL: server.url('/v1'), apiKey: 'wrong-key', maxRetries: 0, timeout: 20000 });
    await assert.rejects(
      wrong.chat.completions.create({ model: MODEL_ID, messages: FRANCE, temperature: 0 }),
      (e) => e instanceof OpenAI.AuthenticationError && e.status === 401,
    );
    await assert.rejects(wrong.models.list(), (e) => e instanceof OpenAI.AuthenticationError);
    const right = new OpenAI({ baseURL: server.url('/v1'), apiKey: 'secret-key-123456789', maxRetries: 0, timeout: 20000 });
    const r = await right.chat.completions.create({ model: MODEL_ID, messages: FRANCE, temperature: 0 });
    assert.match(r.choices[0].message.content, /Paris/);
  });

  test('SIGTERM stops the server with exit code 0', T, async () => {
    await server.stop();
  });
});

// A long context so that an uncancelled answer runs for seconds (4000 tokens); at 512 tokens this model
// finishes any answer in a fraction of a second, before an abort could matter.
describe('openai client: aborting a stream cancels the generation', () => {
  let server;
  before(async () => {
    server = await startServer(['-c', '4096', '--allow-long-ctx', '--metrics']);
  });
  after(() => server?.kill());

  test('abort after a few chunks frees the slot and stops generating', T, async () => {
    const MAX = 4000;
    const client = new OpenAI({ baseURL: server.url('/v1'), apiKey: 'x', maxRetries: 0, timeout: 20000 });
    const before = await metric(server, 'llamacpp:tokens_predicted_total');
    const stream = await client.chat.completions.create({
      model: MODEL_ID, stream: true, max_tokens: MAX,
      messages: [{ role: 'user', content: 'Tell me a long story about a cat.' }],
      ignore_eos: true, // llama.cpp extra, passed through by the SDK
    });
    let n = 0;
    try {
      for await (const chunk of stream) {
        assert.equal(chunk.choices[0]?.finish_reason ?? null, null, 'aborted before the end');
        if (++n === 5) stream.controller.abort();
      }
    } catch (e) {
      assert.ok(e instanceof OpenAI.APIUserAbortError || e.name === 'AbortError', `abort error, got ${e}`);
    }
    assert.ok(n >= 5);
    const t0 = Date.now();
    await waitIdle(server, 10000);
    const generated = (await metric(server, 'llamacpp:tokens_predicted_total')) - before;
    assert.ok(generated < MAX, `the generation was cancelled: ${generated} of ${MAX} tokens generated (idle after ${Date.now() - t0} ms)`);
  });

  test('SIGTERM stops the server with exit code 0', T, async () => {
    await server.stop();
  });
});
