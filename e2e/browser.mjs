// Headless Chromium for the web chat page tests (e2e/webui.test.mjs), and a pacing proxy that hands a chat stream
// to the page one server-sent event at a time.
//
// Chromium is Debian's (/usr/bin/chromium, or LOKAL_CHROMIUM), driven by the playwright-core npm package; both come
// from scripts/setup.sh. Missing pieces are errors, never skips.
import { existsSync, mkdirSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));

export const CHROMIUM = process.env.LOKAL_CHROMIUM || '/usr/bin/chromium';

// Throws a clear error when playwright-core or Chromium is missing.
export function checkBrowserPrerequisites() {
  const missing = [];
  if (!existsSync(path.join(here, 'node_modules', 'playwright-core', 'package.json'))) {
    missing.push('e2e/node_modules/playwright-core is missing: run scripts/setup.sh (npm ci in e2e/)');
  }
  if (!existsSync(CHROMIUM)) missing.push(`${CHROMIUM} is missing: run scripts/setup.sh (Debian package chromium)`);
  if (missing.length) throw new Error(`web page e2e prerequisites missing:\n  ${missing.join('\n  ')}`);
}

export async function launchBrowser() {
  checkBrowserPrerequisites();
  const { chromium } = await import('playwright-core');
  // We run as root in CI containers: Chromium's sandbox needs an unprivileged user.
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'] });
}

// The folder screenshots go to (created on first use): LOKAL_E2E_ARTIFACTS, else build/e2e-artifacts.
export function artifactsDir() {
  const dir = process.env.LOKAL_E2E_ARTIFACTS || path.resolve(here, '..', 'build', 'e2e-artifacts');
  mkdirSync(dir, { recursive: true });
  return dir;
}

// Saves a PNG of the page's viewport as NAME.png in artifactsDir(); returns its path.
export async function screenshot(page, name) {
  const file = path.join(artifactsDir(), `${name.replace(/[^A-Za-z0-9._-]+/g, '-').slice(0, 100)}.png`);
  await page.screenshot({ path: file, animations: 'disabled' });
  return file;
}

// One server-sent-event response held by the gate: the upstream events arrive in `events`, the page gets them only
// as the test releases them.
class HeldStream {
  constructor(res, upstream) {
    this.res = res;
    this.upstream = upstream;
    this.status = upstream.statusCode;
    this.events = []; // raw events from the server, each ending in a blank line
    this.sent = 0; // how many of them the page has been sent
    this.ended = false; // the server's side is complete
    this.passing = false;
    this.waiters = [];
    // Resolves true when the page dropped the connection before the stream ended (e.g. it aborted the fetch).
    this.clientClosed = new Promise((resolve) => res.on('close', () => resolve(!res.writableFinished)));
    let buf = '';
    upstream.setEncoding('utf8');
    upstream.on('data', (d) => {
      buf += d;
      for (let i; (i = buf.indexOf('\n\n')) >= 0;) {
        this.events.push(buf.slice(0, i + 2));
        buf = buf.slice(i + 2);
      }
      this.#changed();
    });
    const end = () => {
      if (this.ended) return;
      if (buf) this.events.push(buf);
      buf = '';
      this.ended = true;
      this.#changed();
    };
    upstream.on('end', end);
    upstream.on('error', end);
    upstream.on('close', end);
  }

  #changed() {
    if (this.passing) this.#write(this.events.length);
    for (const w of this.waiters.splice(0)) w();
  }

  #write(upTo) {
    if (this.res.destroyed) return;
    while (this.sent < upTo) this.res.write(this.events[this.sent++]);
    if (this.ended && this.sent === this.events.length && !this.res.writableEnded) this.res.end();
  }

  // Sends the next n events to the page (waiting for the server to produce them); returns the events sent, an
  // empty array once the stream is over.
  async release(n = 1, timeoutMs = 20000) {
    const deadline = Date.now() + timeoutMs;
    while (this.events.length < this.sent + n && !this.ended) {
      if (Date.now() > deadline) throw new Error(`the server sent no further event within ${timeoutMs} ms (${this.events.length} so far)`);
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, 200);
        this.waiters.push(() => { clearTimeout(timer); resolve(); });
      });
    }
    const from = this.sent;
    this.#write(Math.min(this.sent + n, this.events.length));
    return this.events.slice(from, this.sent);
  }

  // Lets everything through from now on.
  pass() {
    this.passing = true;
    this.#write(this.events.length);
  }

  // The JSON payloads of the events sent so far (or of all received, with all = true); [DONE] left out.
  chunks({ all = false } = {}) {
    const out = [];
    for (const ev of this.events.slice(0, all ? this.events.length : this.sent)) {
      for (const line of ev.split('\n')) {
        if (!line.startsWith('data:')) continue;
        const data = line.slice(5).trim();
        if (data && data !== '[DONE]') out.push(JSON.parse(data));
      }
    }
    return out;
  }

  // The answer text (delta.content) and reasoning (delta.reasoning_content) of the events sent so far.
  content(opts) {
    return this.chunks(opts).map((c) => c.choices?.[0]?.delta?.content ?? '').join('');
  }

  reasoning(opts) {
    return this.chunks(opts).map((c) => c.choices?.[0]?.delta?.reasoning_content ?? '').join('');
  }
}

// A transparent HTTP proxy in front of `target` (a base URL such as http://127.0.0.1:PORT). While hold() is on,
// every text/event-stream response is held back and handed to the test (nextStream()), which releases its events
// one by one: the page then sees an answer grow at the test's pace, however fast the server is. Everything else
// passes unchanged. A page that drops a held stream's connection drops the server's connection too.
//
// (Chrome DevTools network throttling, Network.emulateNetworkConditions, cannot do this: Chromium delays whole socket
// reads, so an answer whose bytes all arrived at once still reaches the page in one piece, only later; and a pace
// in bytes per second would tie the tests to the machine's speed.)
export async function startStreamGate(target) {
  const t = new URL(target);
  const agent = new http.Agent({ keepAlive: false });
  let holding = false;
  const streams = []; // every held stream, in arrival order
  let claimed = 0;
  let wake = null;

  const srv = http.createServer((req, res) => {
    const up = http.request(
      { host: t.hostname, port: t.port, method: req.method, path: req.url, headers: req.headers, agent },
      (ur) => {
        const sse = /text\/event-stream/i.test(ur.headers['content-type'] ?? '');
        if (!sse || !holding) {
          res.writeHead(ur.statusCode, ur.statusMessage, ur.rawHeaders);
          ur.pipe(res);
          return;
        }
        const headers = [];
        for (let i = 0; i < ur.rawHeaders.length; i += 2) {
          if (!/^(content-length|transfer-encoding|connection|keep-alive)$/i.test(ur.rawHeaders[i])) {
            headers.push(ur.rawHeaders[i], ur.rawHeaders[i + 1]);
          }
        }
        res.writeHead(ur.statusCode, ur.statusMessage, headers);
        res.flushHeaders();
        streams.push(new HeldStream(res, ur));
        wake?.();
      },
    );
    up.on('error', () => {
      if (!res.headersSent) res.writeHead(502, { 'Content-Type': 'text/plain' });
      res.end('stream gate: upstream error');
    });
    res.on('close', () => {
      if (!res.writableFinished) up.destroy();
    });
    req.pipe(up);
  });
  await new Promise((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const { port } = srv.address();
  const baseURL = `http://127.0.0.1:${port}`;

  return {
    baseURL,
    url: (p) => `${baseURL}${p}`,
    // Hold the streams that start from now on.
    hold() { holding = true; },
    // Stop holding: new streams pass, held ones are let through.
    pass() {
      holding = false;
      for (const s of streams) s.pass();
    },
    // The next held stream not yet returned (waits for it).
    async nextStream(timeoutMs = 20000) {
      const deadline = Date.now() + timeoutMs;
      while (streams.length <= claimed) {
        if (Date.now() > deadline) throw new Error(`no chat stream reached the stream gate within ${timeoutMs} ms`);
        await new Promise((resolve) => {
          const timer = setTimeout(resolve, 200);
          wake = () => { clearTimeout(timer); resolve(); };
        });
      }
      return streams[claimed++];
    },
    async close() {
      for (const s of streams) s.pass();
      srv.closeAllConnections();
      await new Promise((resolve) => srv.close(resolve));
      agent.destroy();
    },
  };
}
