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
// answers 200. Returns what spawnServe returns: { port, baseURL, url(p), pid, stderr(), exited(), stop(), kill() }.
export function startServer(extraArgs = [], { timeoutMs = 20000 } = {}) {
  return spawnServe(['-m', modelPath(), '--port', '0', '-t', '2', ...extraArgs], { timeoutMs });
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

// Like startServer, but runs `lokal serve ...args` with exactly the given arguments (the caller names the model,
// --port and -t): a replica on a fixed port, e.g. one restarted where a load balancer expects it
// (e2e/scaleout.test.mjs). Resolves once GET /health answers 200; returns { port, baseURL, url(p), pid, stderr(),
// stop(), kill(), exited() }, where kill(signal = 'SIGKILL') resolves once the process is gone.
export async function spawnServe(args, { timeoutMs = 20000 } = {}) {
  checkPrerequisites();
  const child = spawn(process.env.LOKAL_BIN, ['serve', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
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
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk) => {
    stderr += chunk;
  });
  const fail = (message) => {
    if (!exited) child.kill('SIGKILL');
    return new Error(`lokal serve ${args.join(' ')}: ${message}; stderr:\n${tail(stderr)}`);
  };

  const deadline = Date.now() + timeoutMs;
  let port = null;
  for (;;) {
    if (exited) throw fail(`exited (${exited.code ?? exited.signal}) before it was ready`);
    if (port === null) {
      const m = /lokal serve: listening on http:\/\/127\.0\.0\.1:(\d+) /.exec(stderr);
      if (m) port = Number(m[1]);
    }
    if (port !== null) {
      try {
        const r = await fetch(`http://127.0.0.1:${port}/health`);
        await r.arrayBuffer();
        if (r.status === 200) break;
      } catch { /* not accepting yet */ }
    }
    if (Date.now() > deadline) {
      throw fail(port === null ? `printed no listening line in ${timeoutMs} ms` : `GET /health was not 200 within ${timeoutMs} ms`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }

  const baseURL = `http://127.0.0.1:${port}`;
  return {
    port,
    baseURL,
    pid: child.pid,
    url: (p) => `${baseURL}${p}`,
    stderr: () => stderr,
    exited: () => exited,
    // SIGTERM, then expects a clean exit 0 within stopTimeoutMs (the server drains in-flight work).
    async stop(stopTimeoutMs = 15000) {
      if (exited) throw new Error(`lokal serve had already exited (${exited.code ?? exited.signal}); stderr:\n${tail(stderr)}`);
      child.kill('SIGTERM');
      let timer;
      const res = await Promise.race([exitPromise, new Promise((r) => { timer = setTimeout(() => r(null), stopTimeoutMs); })]);
      clearTimeout(timer);
      if (res === null) {
        child.kill('SIGKILL');
        throw new Error(`lokal serve did not exit within ${stopTimeoutMs} ms of SIGTERM; stderr:\n${tail(stderr)}`);
      }
      if (res.code !== 0) throw new Error(`lokal serve exited with ${res.code ?? res.signal} after SIGTERM (want 0); stderr:\n${tail(stderr)}`);
    },
    // Sends the signal (default SIGKILL: a crash) and resolves once the process is gone; a no-op when it is.
    async kill(signal = 'SIGKILL') {
      if (exited) return exited;
      child.kill(signal);
      return exitPromise;
    },
  };
}
