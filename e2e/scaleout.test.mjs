// Scale-out on loopback: two `lokal serve` replicas behind the shipped load-balancer configurations, driven by the
// official `openai` npm client (which retries failed requests itself).
//   deploy/nginx/lokal.conf    least connections, passive health (max_fails), retries on another replica, SSE,
//                              conversation affinity by X-Session-Id
//   deploy/haproxy/haproxy.cfg least connections, active GET /health checks, retries, affinity (stick table)
// For each: load spreads over both replicas; one replica is killed (SIGKILL) mid-run and every client request still
// succeeds; the replica restarted on the same port is taken back.
// Run: LOKAL_BIN=build/src/lokal LOKAL_TEST_DATA=../shared node --test e2e/scaleout.test.mjs
//
// Everything listens on 127.0.0.1 and is stopped again, also when a test fails. nginx and haproxy are Debian
// packages that scripts/setup.sh installs: a missing one fails the test (never a skip).
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { checkPrerequisites, modelPath, spawnServe, MODEL_ID, PARIS } from './server.mjs';

checkPrerequisites(); // fails the file with a clear message (run scripts/setup.sh, LOKAL_BIN, model)
const { default: OpenAI } = await import('openai');

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const FRANCE = [{ role: 'user', content: 'What is the capital of France?' }];
const T = { timeout: 90000 };

// One compute thread and two slots per replica: two replicas share the machine's cores.
const replicaArgs = (port) => ['-m', modelPath(), '--host', '127.0.0.1', '--port', String(port), '-t', '1', '-np', '2',
  '--metrics', '--no-webui'];

const tail = (s, n = 3000) => (s.length > n ? `...${s.slice(-n)}` : s);

// Last resort when this process ends without its after() hooks (an uncaught error, SIGINT/SIGTERM): SIGKILL what it
// started. Entries: () => void, removed again once the process they kill is stopped.
const onExit = new Set();
process.on('exit', () => { for (const f of onExit) f(); });
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.once(sig, () => {
    for (const f of onExit) f();
    process.exit(128 + os.constants.signals[sig]);
  });
}
const killOnExit = (pid, group = false) => {
  const f = () => {
    try { process.kill(group ? -pid : pid, 'SIGKILL'); } catch { /* gone */ }
  };
  onExit.add(f);
  return () => onExit.delete(f);
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// The path of a program from PATH or the sbin folders (Debian installs nginx and haproxy in /usr/sbin).
function findProgram(name) {
  const dirs = [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/usr/local/sbin', '/sbin'];
  for (const d of dirs) {
    if (d && existsSync(path.join(d, name))) return path.join(d, name);
  }
  throw new Error(`${name} is missing: run scripts/setup.sh (Debian package ${name}); e2e/scaleout.test.mjs runs the load balancer for real`);
}

// A port free on 127.0.0.1 right now (for the load balancer, which cannot pick its own and print it).
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

// Replaces `from` in text by `to`, `count` times exactly (the shipped file must still look as the test expects).
function replaceExactly(text, from, to, count, file) {
  const n = text.split(from).length - 1;
  assert.equal(n, count, `${file}: expected ${count} occurrence(s) of "${from}", found ${n}`);
  return text.split(from).join(to);
}

// Runs a load balancer (its own process group, so that nothing of it can outlive the test) and waits until a GET
// /health through it answers 200. stop() ends it: SIGTERM, then SIGKILL of the group.
async function startBalancer(name, program, args, port, logFile) {
  const child = spawn(program, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  const forget = killOnExit(child.pid, true);
  let output = '';
  child.stdout.setEncoding('utf8').on('data', (c) => { output += c; });
  child.stderr.setEncoding('utf8').on('data', (c) => { output += c; });
  let exited = null;
  const exitPromise = new Promise((resolve) => child.on('exit', (code, signal) => { exited = { code, signal }; resolve(); }));
  child.on('error', (e) => { output += `\nspawn error: ${e.message}`; });
  const log = () => `${tail(output)}${logFile && existsSync(logFile) ? `\n${logFile}:\n${tail(readFileSync(logFile, 'utf8'))}` : ''}`;
  const killGroup = (signal) => {
    try { process.kill(-child.pid, signal); } catch { /* gone */ }
  };
  const stop = async () => {
    if (exited) return;
    killGroup('SIGTERM');
    const t = setTimeout(() => killGroup('SIGKILL'), 5000);
    await exitPromise;
    clearTimeout(t);
    killGroup('SIGKILL'); // workers, should any be left
    forget();
  };
  const deadline = Date.now() + 15000;
  for (;;) {
    if (exited) throw new Error(`${name} exited (${exited.code ?? exited.signal}) at start:\n${log()}`);
    try {
      const r = await fetch(`http://127.0.0.1:${port}/health`);
      await r.arrayBuffer();
      if (r.status === 200) break;
    } catch { /* not listening yet */ }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`GET /health through ${name} was not 200 within 15 s:\n${log()}`);
    }
    await sleep(100);
  }
  // Waits (bounded) until the balancer's output or log file matches re.
  const waitFor = async (re, what, timeoutMs = 20000) => {
    const until = Date.now() + timeoutMs;
    while (!re.test(log())) {
      if (Date.now() > until) assert.fail(`${name} did not log ${what} within ${timeoutMs} ms:\n${log()}`);
      await sleep(100);
    }
  };
  return { stop, log, waitFor };
}

// Runs fn(i) for i < n with `concurrency` requests at a time; resolves to the settled results in order of i.
async function runMany(n, concurrency, fn) {
  const results = new Array(n);
  let next = 0;
  const worker = async () => {
    while (next < n) {
      const i = next++;
      try {
        results[i] = { status: 'fulfilled', value: await fn(i) };
      } catch (e) {
        results[i] = { status: 'rejected', reason: e };
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return results;
}

function assertAllSucceeded(results, what) {
  const failed = results.map((r, i) => [r, i]).filter(([r]) => r.status !== 'fulfilled');
  assert.equal(failed.length, 0, `${what}: ${failed.length} of ${results.length} requests failed: ${failed.slice(0, 3)
    .map(([r, i]) => `#${i}: ${r.reason?.status ?? ''} ${r.reason?.message}`).join('; ')}`);
  return results.map((r) => r.value);
}

// Everything one test suite runs: two replicas, a load balancer in front, an openai client that counts its HTTP
// attempts (requests + its own retries).
function scaleOut(kind) {
  const s = { attempts: 0, replicas: {}, ports: {}, balancer: null, dir: null, client: null };

  // The replica ("A" or "B") that answered: the last address of X-Lokal-Upstream ("A, B" when A failed first).
  s.servedBy = (upstream) => {
    const last = upstream.split(',').pop().trim();
    const hit = Object.entries(s.ports).find(([, p]) => last === `127.0.0.1:${p}`);
    assert.ok(hit, `X-Lokal-Upstream "${upstream}" names no replica (${JSON.stringify(s.ports)})`);
    return hit[0];
  };

  s.chat = async ({ messages = FRANCE, maxTokens = 12, sessionId } = {}) => {
    const { data, response } = await s.client.chat.completions
      .create({ model: MODEL_ID, messages, max_tokens: maxTokens, temperature: 0 },
        sessionId ? { headers: { 'X-Session-Id': sessionId } } : undefined)
      .withResponse();
    const upstream = response.headers.get('x-lokal-upstream') ?? '';
    return { data, upstream, replica: s.servedBy(upstream), content: data.choices[0].message.content };
  };

  s.metric = async (replica, name) => {
    const r = await fetch(`http://127.0.0.1:${s.ports[replica]}/metrics`);
    const text = await r.text();
    const m = new RegExp(`^${name.replace(/[:]/g, '\\:')} ([0-9.e+]+)$`, 'm').exec(text);
    assert.ok(m, `/metrics of replica ${replica} has no ${name}`);
    return Number(m[1]);
  };

  // A replica, killed at the latest when this process exits.
  s.spawnReplica = async (port) => {
    const r = await spawnServe(replicaArgs(port));
    const forget = killOnExit(r.pid);
    return { ...r, kill: async (signal) => { const e = await r.kill(signal); forget(); return e; } };
  };

  s.start = async (startBalancerFn) => {
    s.dir = mkdtempSync(path.join(os.tmpdir(), `lokal-${kind}-`));
    const started = await Promise.allSettled([s.spawnReplica(0), s.spawnReplica(0)]);
    // Keep what did start, so that stop() ends it, before reporting what did not.
    started.forEach((r, i) => { if (r.status === 'fulfilled') s.replicas['AB'[i]] = r.value; });
    const failed = started.find((r) => r.status === 'rejected');
    if (failed) throw failed.reason;
    const { A: a, B: b } = s.replicas;
    s.ports = { A: a.port, B: b.port };
    s.port = await freePort();
    s.balancer = await startBalancerFn(s);
    s.client = new OpenAI({
      baseURL: `http://127.0.0.1:${s.port}/v1`,
      apiKey: 'unused', // the replicas listen on loopback without keys
      maxRetries: 5,
      timeout: 30000,
      fetch: (url, init) => {
        s.attempts += 1;
        return fetch(url, init);
      },
    });
  };

  s.stop = async () => {
    await s.balancer?.stop();
    await Promise.all(Object.values(s.replicas).map((r) => r.kill()));
    if (s.dir) rmSync(s.dir, { recursive: true, force: true });
  };

  // The shared scenario: replica A is killed after `killAfter` of n answers; every request must still succeed.
  s.killMidRun = async (t, n, killAfter) => {
    let done = 0;
    let killedAt = null;
    let killing = null;
    const results = await runMany(n, 4, async (i) => {
      const startedAt = Date.now();
      const r = await s.chat();
      done += 1;
      if (done === killAfter) {
        killing = s.replicas.A.kill('SIGKILL').then(() => { killedAt = Date.now(); });
      }
      return { ...r, startedAt };
    });
    await killing;
    const answers = assertAllSucceeded(results, `${kind} with replica A killed after ${killAfter} answers`);
    for (const a of answers) assert.equal(a.content, PARIS);
    const after = answers.filter((a) => a.startedAt > killedAt);
    assert.ok(after.length > 0, 'requests were sent after the kill');
    for (const a of after) assert.equal(a.replica, 'B', `a request sent after A was killed came from ${a.upstream}`);
    t.diagnostic(`${kind}: ${answers.length} answers, ${after.length} sent after the kill; client HTTP attempts so far ${s.attempts}`);
    return answers;
  };

  // Restarts A on its port (unless restarted already) and waits, one request every 250 ms (at most 120), until the
  // balancer sends one to it.
  s.restartAndTakeBack = async (t, { restart = true } = {}) => {
    if (restart) s.replicas.A = await s.spawnReplica(s.ports.A);
    const began = Date.now();
    for (let i = 0; i < 120; i += 1) {
      const r = await s.chat({ maxTokens: 2 });
      if (r.replica === 'A') {
        t.diagnostic(`${kind}: replica A restarted on port ${s.ports.A} served again after ${Date.now() - began} ms (${i + 1} requests)`);
        return;
      }
      await sleep(250);
    }
    assert.fail(`${kind}: the restarted replica A got no request in 120 tries:\n${s.balancer.log()}`);
  };

  return s;
}

describe('nginx (deploy/nginx/lokal.conf) in front of two lokal serve replicas', T, () => {
  const s = scaleOut('nginx');

  before(async () => {
    const nginx = findProgram('nginx');
    await s.start(async () => {
      const shipped = path.join(repo, 'deploy', 'nginx', 'lokal.conf');
      let conf = readFileSync(shipped, 'utf8');
      conf = replaceExactly(conf, 'server 127.0.0.1:8081 ', `server 127.0.0.1:${s.ports.A} `, 2, shipped);
      conf = replaceExactly(conf, 'server 127.0.0.1:8082 ', `server 127.0.0.1:${s.ports.B} `, 2, shipped);
      conf = replaceExactly(conf, 'listen 127.0.0.1:8080;', `listen 127.0.0.1:${s.port};`, 1, shipped);
      conf = replaceExactly(conf, '/var/log/nginx/lokal.access.log', path.join(s.dir, 'access.log'), 1, shipped);
      writeFileSync(path.join(s.dir, 'lokal.conf'), conf);
      const tmp = path.join(s.dir, 'tmp');
      mkdirSync(tmp);
      // The http{} around the snippet, as Debian's /etc/nginx/nginx.conf gives it, with every path in the test's
      // folder. As root, the workers stay root (the folder is private to the test).
      writeFileSync(path.join(s.dir, 'nginx.conf'), `daemon off;
${process.getuid?.() === 0 ? 'user root root;' : ''}
worker_processes 1;
pid ${s.dir}/nginx.pid;
error_log ${s.dir}/error.log notice;
events { worker_connections 512; }
http {
    client_body_temp_path ${tmp}/client_body;
    proxy_temp_path ${tmp}/proxy;
    fastcgi_temp_path ${tmp}/fastcgi;
    uwsgi_temp_path ${tmp}/uwsgi;
    scgi_temp_path ${tmp}/scgi;
    include ${s.dir}/lokal.conf;
}
`);
      return startBalancer('nginx', nginx, ['-p', s.dir, '-e', path.join(s.dir, 'error.log'), '-c', path.join(s.dir, 'nginx.conf')],
        s.port, path.join(s.dir, 'error.log'));
    });
  });
  after(() => s.stop());

  test('spreads the load over both replicas (least connections)', T, async (t) => {
    const before = { A: await s.metric('A', 'llamacpp:tokens_predicted_total'), B: await s.metric('B', 'llamacpp:tokens_predicted_total') };
    const answers = assertAllSucceeded(await runMany(40, 4, () => s.chat()), 'nginx, both replicas up');
    const count = { A: 0, B: 0 };
    for (const a of answers) {
      assert.equal(a.content, PARIS);
      count[a.replica] += 1;
    }
    t.diagnostic(`nginx: replica A served ${count.A}, B ${count.B} of 40`);
    assert.ok(count.A >= 2 && count.B >= 2, `both replicas serve a share: ${JSON.stringify(count)}`);
    // Each replica's own /metrics agrees that it generated.
    for (const r of ['A', 'B']) {
      assert.ok(await s.metric(r, 'llamacpp:tokens_predicted_total') > before[r], `replica ${r}'s tokens_predicted_total grew`);
    }
  });

  test('streams server-sent events through the proxy', T, async () => {
    const { data: stream, response } = await s.client.chat.completions
      .create({ model: MODEL_ID, messages: FRANCE, max_tokens: 12, temperature: 0, stream: true }).withResponse();
    assert.match(response.headers.get('content-type') ?? '', /^text\/event-stream/);
    s.servedBy(response.headers.get('x-lokal-upstream') ?? '');
    let content = '';
    const finish = [];
    for await (const chunk of stream) {
      content += chunk.choices[0]?.delta?.content ?? '';
      if (chunk.choices[0]?.finish_reason) finish.push(chunk.choices[0].finish_reason);
    }
    // The whole answer and the stream's own end arrive through nginx (how lokal splits the answer into events is
    // its business, and timing is not checked here).
    assert.equal(content, PARIS);
    assert.deepEqual(finish, ['stop']);
  });

  test('a replica killed mid-run: every request still succeeds (nginx next upstream + client retries)', T, async (t) => {
    const answers = await s.killMidRun(t, 40, 10);
    // Passive health: after max_fails failures A is out for fail_timeout.
    await s.balancer.waitFor(/upstream server temporarily disabled/, 'that it took the dead replica out');
    // nginx itself sent at least one request on to B after A failed it (X-Lokal-Upstream "A, B").
    const rerouted = answers.filter((a) => a.upstream.includes(`127.0.0.1:${s.ports.A},`) && a.replica === 'B');
    t.diagnostic(`nginx: ${rerouted.length} answers were re-sent by nginx from A to B`);
    assert.ok(rerouted.length >= 1, `nginx re-sent no request from the dead replica A to B:\n${s.balancer.log()}`);
  });

  test('the replica restarted on its port is taken back (after fail_timeout)', T, async (t) => {
    await s.restartAndTakeBack(t);
    // Both up and idle: least connections alternates between them.
    const answers = assertAllSucceeded(await runMany(10, 1, () => s.chat({ maxTokens: 2 })), 'nginx after the restart');
    const served = new Set(answers.map((a) => a.replica));
    assert.deepEqual([...served].sort(), ['A', 'B'], 'both replicas serve again');
  });

  test('conversation affinity: one X-Session-Id stays on one replica, whose prefix cache holds the earlier turns', T, async () => {
    const filler = 'You are a helpful assistant who answers questions about geography briefly and correctly. '.repeat(8);
    for (const session of ['s-alpha', 's-beta', 's-gamma']) {
      // A system prompt of its own per session: a cache hit can only come from this session's earlier turn.
      const messages = [{ role: 'system', content: `Session ${session}. ${filler}` }];
      const replicas = [];
      for (let turn = 0; turn < 3; turn += 1) {
        messages.push({ role: 'user', content: `What is the capital of France? (question ${turn + 1})` });
        const r = await s.chat({ messages, sessionId: session });
        replicas.push(r.replica);
        const cached = r.data.usage?.prompt_tokens_details?.cached_tokens ?? 0;
        if (turn > 0) assert.ok(cached > 0, `${session} turn ${turn + 1}: no cached prompt tokens on ${r.replica} (usage ${JSON.stringify(r.data.usage)})`);
        messages.push({ role: 'assistant', content: r.content });
      }
      assert.equal(new Set(replicas).size, 1, `${session} stayed on one replica: ${replicas}`);
    }
    // Different sessions spread over both replicas (consistent hashing of 24 ids).
    const answers = assertAllSucceeded(await runMany(24, 2, (i) => s.chat({ maxTokens: 1, sessionId: `spread-${i}` })), 'sessions');
    assert.deepEqual([...new Set(answers.map((a) => a.replica))].sort(), ['A', 'B'], 'sessions land on both replicas');
  });
});

describe('HAProxy (deploy/haproxy/haproxy.cfg) in front of two lokal serve replicas', T, () => {
  const s = scaleOut('haproxy');

  before(async () => {
    const haproxy = findProgram('haproxy');
    await s.start(async () => {
      const shipped = path.join(repo, 'deploy', 'haproxy', 'haproxy.cfg');
      let conf = readFileSync(shipped, 'utf8');
      conf = replaceExactly(conf, ' 127.0.0.1:8081 check', ` 127.0.0.1:${s.ports.A} check`, 1, shipped);
      conf = replaceExactly(conf, ' 127.0.0.1:8082 check', ` 127.0.0.1:${s.ports.B} check`, 1, shipped);
      conf = replaceExactly(conf, 'bind 127.0.0.1:8080', `bind 127.0.0.1:${s.port}`, 1, shipped);
      const cfg = path.join(s.dir, 'haproxy.cfg');
      writeFileSync(cfg, conf);
      return startBalancer('haproxy', haproxy, ['-db', '-f', cfg], s.port, null);
    });
  });
  after(() => s.stop());

  test('spreads the load over both replicas (leastconn)', T, async (t) => {
    const answers = assertAllSucceeded(await runMany(20, 4, () => s.chat()), 'haproxy, both replicas up');
    const count = { A: 0, B: 0 };
    for (const a of answers) {
      assert.equal(a.content, PARIS);
      count[a.replica] += 1;
    }
    t.diagnostic(`haproxy: replica A served ${count.A}, B ${count.B} of 20`);
    assert.ok(count.A >= 2 && count.B >= 2, `both replicas serve a share: ${JSON.stringify(count)}`);
  });

  test('conversation affinity: one X-Session-Id stays on one replica (stick table)', T, async () => {
    for (const session of ['h-alpha', 'h-beta']) {
      const replicas = [];
      for (let i = 0; i < 4; i += 1) replicas.push((await s.chat({ maxTokens: 2, sessionId: session })).replica);
      assert.equal(new Set(replicas).size, 1, `${session} stayed on one replica: ${replicas}`);
    }
  });

  test('a replica killed mid-run: every request still succeeds (retries + redispatch, /health checks)', T, async (t) => {
    await s.killMidRun(t, 30, 8);
    // The active check takes A out (fall 2 x inter 2 s) even without client traffic.
    await s.balancer.waitFor(/lokal-8081 is DOWN/, 'that the dead replica lokal-8081 is DOWN');
  });

  test('the replica restarted on its port is taken back (GET /health passes again)', T, async (t) => {
    s.replicas.A = await s.spawnReplica(s.ports.A);
    await s.balancer.waitFor(/lokal-8081 is UP/, 'that the restarted replica lokal-8081 is UP');
    await s.restartAndTakeBack(t, { restart: false });
  });
});
