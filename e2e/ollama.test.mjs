// End-to-end tests: a real `lokal serve` driven by the official `ollama` npm client.
// Run: LOKAL_BIN=build/src/lokal LOKAL_TEST_DATA=../shared node --test e2e/ollama.test.mjs
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { checkPrerequisites, startServer, MODEL_ID, GET_WEATHER, PARIS } from './server.mjs';

checkPrerequisites(); // fails the file with a clear message (run scripts/setup.sh, LOKAL_BIN, model)
const { Ollama } = await import('ollama');

const T = { timeout: 30000 };
const GREEDY = { temperature: 0 };
const FRANCE = [{ role: 'user', content: 'What is the capital of France?' }];
const WEATHER = [{ role: 'user', content: "What's the weather in Tokyo?" }];
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

function assertFinal(r) {
  assert.equal(r.done, true);
  assert.equal(r.model, MODEL_ID);
  assert.equal(typeof r.created_at, 'string');
  assert.ok(!Number.isNaN(Date.parse(r.created_at)), `created_at parses: ${r.created_at}`);
  assert.ok(Number.isInteger(r.prompt_eval_count) && r.prompt_eval_count > 0, `prompt_eval_count: ${r.prompt_eval_count}`);
  assert.ok(Number.isInteger(r.eval_count) && r.eval_count > 0, `eval_count: ${r.eval_count}`);
  for (const k of ['total_duration', 'prompt_eval_duration', 'eval_duration']) {
    assert.ok(Number.isInteger(r[k]) && r[k] > 0, `${k} in nanoseconds: ${r[k]}`);
  }
}

// Reads a whole NDJSON stream; every part but the last has done false, the last done true.
async function collect(iterable) {
  const parts = [];
  for await (const p of iterable) parts.push(p);
  assert.ok(parts.length > 1, 'several parts');
  parts.slice(0, -1).forEach((p, i) => assert.equal(p.done, false, `part ${i} has done false`));
  assertFinal(parts.at(-1));
  return parts;
}

function assertWeatherCall(msg) {
  const call = msg.tool_calls?.[0];
  assert.ok(call, `a tool call in ${JSON.stringify(msg)}`);
  assert.equal(call.function.name, 'get_weather');
  assert.equal(typeof call.function.arguments, 'object', 'arguments is an object');
  assert.equal(typeof call.function.arguments.city, 'string');
}

describe('ollama client against lokal serve', () => {
  let server;
  let ollama;
  before(async () => {
    server = await startServer();
    ollama = new Ollama({ host: server.baseURL });
  });
  after(() => {
    ollama?.abort();
    server?.kill();
  });

  test('chat non-stream', T, async () => {
    const r = await ollama.chat({ model: MODEL_ID, messages: FRANCE, options: GREEDY, stream: false });
    assert.equal(r.message.role, 'assistant');
    assert.match(r.message.content, /Paris/);
    assert.equal(r.message.content, PARIS);
    assert.equal(r.done_reason, 'stop');
    assertFinal(r);
  });

  test('chat stream: parts add up to the non-stream answer', T, async () => {
    const parts = await collect(await ollama.chat({ model: MODEL_ID, messages: FRANCE, options: GREEDY, stream: true }));
    assert.equal(parts.map((p) => p.message.content).join(''), PARIS);
    assert.ok(parts.every((p) => p.message.role === 'assistant'));
    assert.equal(parts.at(-1).done_reason, 'stop');
  });

  test('generate non-stream and stream', T, async () => {
    const r = await ollama.generate({ model: MODEL_ID, prompt: 'What is the capital of France?', options: GREEDY, stream: false });
    assert.match(r.response, /Paris/);
    assert.equal(r.done_reason, 'stop');
    assertFinal(r);

    const parts = await collect(await ollama.generate({ model: MODEL_ID, prompt: 'What is the capital of France?', options: GREEDY, stream: true }));
    assert.equal(parts.map((p) => p.response).join(''), r.response);

    const limited = await ollama.generate({ model: MODEL_ID, prompt: 'Once upon a time', raw: true, options: { num_predict: 5 } });
    assert.equal(limited.eval_count, 5);
    assert.equal(limited.done_reason, 'length');
  });

  test('tools: a tool call and the round trip with role: tool', T, async () => {
    const r = await ollama.chat({ model: MODEL_ID, messages: WEATHER, tools: [GET_WEATHER], options: GREEDY });
    assertWeatherCall(r.message);
    assert.equal(r.done, true);

    const streamed = await collect(await ollama.chat({ model: MODEL_ID, messages: WEATHER, tools: [GET_WEATHER], options: GREEDY, stream: true }));
    const calls = streamed.flatMap((p) => p.message.tool_calls ?? []);
    assert.equal(calls.length, 1, 'one tool call across the stream');
    assertWeatherCall({ tool_calls: calls });

    const second = await ollama.chat({
      model: MODEL_ID,
      tools: [GET_WEATHER],
      options: GREEDY,
      messages: [
        ...WEATHER,
        r.message, // as the client returned it: tool_calls with object arguments
        { role: 'tool', content: '{"temperature": 21}', tool_name: 'get_weather' },
      ],
    });
    assert.match(second.message.content, /\S/, 'a non-empty text answer');
    assert.ok(!second.message.tool_calls?.length, 'no further tool call');
    assert.equal(second.done_reason, 'stop');
  });

  test('think: true gives message.thinking', T, async () => {
    const r = await ollama.chat({ model: MODEL_ID, messages: THINK, think: true, options: GREEDY });
    assert.equal(typeof r.message.thinking, 'string', `thinking in ${JSON.stringify(r.message)}`);
    assert.match(r.message.thinking, /\S/);
    assert.doesNotMatch(r.message.content, /<\/?think>/);
    assert.match(r.message.content, /Paris/);

    const parts = await collect(await ollama.chat({ model: MODEL_ID, messages: THINK, think: true, options: GREEDY, stream: true }));
    assert.equal(parts.map((p) => p.message.thinking ?? '').join(''), r.message.thinking);
    assert.equal(parts.map((p) => p.message.content).join(''), r.message.content);
  });

  test("format: 'json' and a schema", T, async () => {
    const j = await ollama.chat({ model: MODEL_ID, messages: ANNA, format: 'json', options: GREEDY });
    const parsed = JSON.parse(j.message.content);
    assert.equal(typeof parsed, 'object');
    assert.notEqual(parsed, null);

    const s = await ollama.chat({ model: MODEL_ID, messages: ANNA, format: PERSON_SCHEMA, options: GREEDY });
    const obj = JSON.parse(s.message.content);
    assert.equal(typeof obj.name, 'string');
    assert.ok(Number.isInteger(obj.age), `age is an integer: ${s.message.content}`);

    const g = await ollama.generate({ model: MODEL_ID, prompt: ANNA[0].content, format: PERSON_SCHEMA, options: GREEDY });
    assert.ok(Number.isInteger(JSON.parse(g.response).age));
  });

  test('embed and embeddings: unit vectors, the same text the same vector', T, async () => {
    const r = await ollama.embed({ model: MODEL_ID, input: ['The cat sat on the mat.', 'A dog.'] });
    assert.equal(r.embeddings.length, 2);
    assert.equal(r.embeddings[0].length, 256);
    const norm = Math.sqrt(r.embeddings[0].reduce((a, v) => a + v * v, 0));
    assert.ok(Math.abs(norm - 1) < 1e-4, `norm ${norm}`);
    const old = await ollama.embeddings({ model: MODEL_ID, prompt: 'The cat sat on the mat.' });
    assert.deepEqual(old.embedding, r.embeddings[0]);
  });

  test('list, ps, show, version', T, async () => {
    const { models } = await ollama.list();
    const m = models.find((x) => x.name === MODEL_ID);
    assert.ok(m, `${MODEL_ID} in ${JSON.stringify(models)}`);
    assert.equal(m.model, MODEL_ID);
    assert.equal(m.details.format, 'gguf');
    assert.ok(m.size > 0);
    assert.ok(!Number.isNaN(Date.parse(m.modified_at)), `modified_at parses: ${m.modified_at}`);

    const ps = await ollama.ps();
    const running = ps.models.find((x) => x.name === MODEL_ID);
    assert.ok(running, `${MODEL_ID} in ps: ${JSON.stringify(ps)}`);
    assert.equal(running.details.format, 'gguf');
    assert.ok(!Number.isNaN(Date.parse(running.expires_at)), `expires_at parses: ${running.expires_at}`);

    const show = await ollama.show({ model: MODEL_ID });
    assert.equal(typeof show.template, 'string');
    assert.match(show.template, /im_start/);
    assert.ok(Array.isArray(show.capabilities) && show.capabilities.includes('completion'), `capabilities: ${show.capabilities}`);
    assert.ok(show.capabilities.includes('tools'));
    assert.equal(show.details.format, 'gguf');
    assert.equal(typeof show.model_info, 'object');

    const v = await ollama.version();
    assert.equal(typeof v.version, 'string');
    assert.match(v.version, /\d/);
  });

  test("an unknown model rejects with ResponseError 404", T, async () => {
    await assert.rejects(
      ollama.chat({ model: 'nope', messages: FRANCE, stream: false }),
      (e) => e.name === 'ResponseError' && e.status_code === 404 && /nope/.test(e.error),
    );
    await assert.rejects(
      ollama.chat({ model: 'nope', messages: FRANCE, stream: true }),
      (e) => e.name === 'ResponseError' && e.status_code === 404,
    );
    await assert.rejects(
      ollama.show({ model: 'nope' }),
      (e) => e.name === 'ResponseError' && e.status_code === 404,
    );
  });

  test('SIGTERM stops the server with exit code 0', T, async () => {
    await server.stop();
  });
});
