// Starts a real `lokal serve` for the end-to-end tests and stops it again.
//
// LOKAL_BIN is the lokal binary, LOKAL_TEST_DATA the shared test data folder (the model is
// models/real/tinychat-4m-q8_0.gguf under it). Missing pieces are errors, never skips: a test run
// that cannot reach a server must fail loudly.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));

export const MODEL_ID = 'tinychat-4m-q8_0';

// Fixtures every client test shares: tinychat's greedy answer to "What is the capital of France?" and the tool it
// was trained to call.
export const PARIS = 'The capital of France is Paris.';
export const GET_WEATHER = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'Get the current weather in a city',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
  },
};

const tail = (s) => (s.length > 4000 ? `...${s.slice(-4000)}` : s);

// Throws a clear error when the npm clients, the binary or the model are missing.
export function checkPrerequisites() {
  const missing = [];
  for (const pkg of ['openai', 'ollama']) {
    if (!existsSync(path.join(here, 'node_modules', pkg, 'package.json'))) {
      missing.push(`e2e/node_modules/${pkg} is missing: run scripts/setup.sh (npm ci in e2e/)`);
    }
  }
  const bin = process.env.LOKAL_BIN;
  if (!bin) missing.push('LOKAL_BIN is not set (the path of the lokal binary, e.g. build/src/lokal)');
  else if (!existsSync(bin)) missing.push(`LOKAL_BIN=${bin} does not exist (build lokal first)`);
  const data = process.env.LOKAL_TEST_DATA;
  if (!data) missing.push('LOKAL_TEST_DATA is not set (the shared test data folder)');
  else if (!existsSync(modelPath())) missing.push(`the model ${modelPath()} does not exist`);
  if (missing.length) throw new Error(`e2e prerequisites missing:\n  ${missing.join('\n  ')}`);
}

export function modelPath() {
  return path.join(process.env.LOKAL_TEST_DATA ?? '', 'models', 'real', `${MODEL_ID}.gguf`);
}

// Spawns `lokal serve -m MODEL --port 0 -t 2 ...extraArgs` on 127.0.0.1 and resolves once GET /health
// answers 200. Returns { port, baseURL, url(p), stop(), kill(), stderr() }.
export async function startServer(extraArgs = [], { timeoutMs = 20000 } = {}) {
  checkPrerequisites();
  const args = ['serve', '-m', modelPath(), '--port', '0', '-t', '2', ...extraArgs];
  const child = spawn(process.env.LOKAL_BIN, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  let exited = null;
  const exitPromise = new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      exited = { code, signal };
      resolve(exited);
    });
  });
  child.on('error', (e) => {
    stderr += `\nspawn error: ${e.message}`;
  });

  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`lokal serve printed no listening line in ${timeoutMs} ms; stderr:\n${tail(stderr)}`)), timeoutMs);
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk) => {
      stderr += chunk;
      const m = /lokal serve: listening on http:\/\/127\.0\.0\.1:(\d+) /.exec(stderr);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
    exitPromise.then((e) => {
      clearTimeout(timer);
      reject(new Error(`lokal serve exited (${e.code ?? e.signal}) before listening; stderr:\n${tail(stderr)}`));
    });
  }).catch((e) => {
    child.kill('SIGKILL');
    throw e;
  });

  const baseURL = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (exited) throw new Error(`lokal serve exited (${exited.code ?? exited.signal}) while loading; stderr:\n${tail(stderr)}`);
    try {
      const r = await fetch(`${baseURL}/health`);
      await r.arrayBuffer();
      if (r.status === 200) break;
    } catch { /* not accepting yet */ }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`GET /health was not 200 within ${timeoutMs} ms; stderr:\n${tail(stderr)}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }

  return {
    port,
    baseURL,
    url: (p) => `${baseURL}${p}`,
    stderr: () => stderr,
    // SIGTERM, then expects a clean exit 0 within timeoutMs (the server drains in-flight work).
    async stop(stopTimeoutMs = 15000) {
      if (exited) throw new Error(`lokal serve had already exited (${exited.code ?? exited.signal}); stderr:\n${tail(stderr)}`);
      child.kill('SIGTERM');
      let timer;
      const res = await Promise.race([
        exitPromise,
        new Promise((r) => { timer = setTimeout(() => r(null), stopTimeoutMs); }),
      ]);
      clearTimeout(timer);
      if (res === null) {
        child.kill('SIGKILL');
        throw new Error(`lokal serve did not exit within ${stopTimeoutMs} ms of SIGTERM; stderr:\n${tail(stderr)}`);
      }
      if (res.code !== 0) throw new Error(`lokal serve exited with ${res.code ?? res.signal} after SIGTERM (want 0); stderr:\n${tail(stderr)}`);
    },
    // Teardown safety net: never leaves a server behind.
    kill() {
      if (!exited) child.kill('SIGKILL');
    },
  };
}

// GET /health as JSON.
export async function health(server) {
  const r = await fetch(server.url('/health'));
  return { status: r.status, body: await r.json() };
}

// Polls GET /health until slots.in_flight is 0; returns the last body or throws after timeoutMs.
export async function waitIdle(server, timeoutMs = 10000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = (await health(server)).body;
    if (last?.slots?.in_flight === 0) return last;
    if (Date.now() > deadline) throw new Error(`slots.in_flight still ${last?.slots?.in_flight} after ${timeoutMs} ms: ${JSON.stringify(last)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
