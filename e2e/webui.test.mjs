// End-to-end tests of the web chat page that `lokal serve` serves at /, driven in headless Chromium (playwright-core).
// Run: LOKAL_BIN=build/src/lokal LOKAL_TEST_DATA=../shared node --test e2e/webui.test.mjs
// Screenshots (light and dark, desktop and phone, and one per failed test) go to $LOKAL_E2E_ARTIFACTS, else
// build/e2e-artifacts.
//
// Nothing here waits a fixed time and then asserts: every wait polls for a state with a deadline, so a slow build
// (AddressSanitizer) only makes the tests slower. The model answers in milliseconds; to watch an answer stream, the
// page of the streaming tests talks to the server through a stream gate (browser.mjs) that releases the server's
// events one at a time.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import zlib from 'node:zlib';
import { readdirSync, rmSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { checkPrerequisites, startServer, waitIdle, GET_WEATHER, PARIS } from './server.mjs';
import { artifactsDir, checkBrowserPrerequisites, launchBrowser, screenshot, startStreamGate } from './browser.mjs';

checkPrerequisites(); // fails the file with a clear message (run scripts/setup.sh, LOKAL_BIN, model)
checkBrowserPrerequisites(); // playwright-core and /usr/bin/chromium (scripts/setup.sh)

const T = { timeout: 90000 }; // upper bounds only (passing runs take seconds); generous for an ASan binary on a loaded 2-core machine
const FRANCE_Q = 'What is the capital of France?';
const STORY_Q = 'Tell me a short story about a cat.';
const WEATHER_Q = "What's the weather in Tokyo?";
const THINK_SYSTEM = 'Think step by step before you answer.';
const N_CTX = 512; // tinychat-4m's trained context, which lokal serve uses by default

// ---- helpers ------------------------------------------------------------------------------------------------------

// Polls probe() until pred(state) holds; returns that state, or throws with the last state seen.
async function until(probe, pred, what, timeoutMs = 45000) {
  const deadline = Date.now() + timeoutMs;
  let state;
  for (;;) {
    state = await probe();
    if (pred(state)) return state;
    if (Date.now() > deadline) {
      throw new Error(`${what}: not reached within ${timeoutMs} ms; last seen: ${JSON.stringify(state, null, 1)?.slice(0, 3000)}`);
    }
    await new Promise((r) => setTimeout(r, 25));
  }
}

// Rejects after ms unless p settles first.
function within(p, ms, what) {
  let timer;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms); }),
  ]);
}

let browser;

// A fresh browser context (its own localStorage) with the page loaded. `chats` collects every POST
// /v1/chat/completions the page makes ({ body, request }), `problems` the uncaught exceptions and CSP violations.
async function openPage(baseURL, { viewport = { width: 1280, height: 800 }, phone = false, clipboard = false, waitModels = true } = {}) {
  const context = await browser.newContext({ viewport, isMobile: phone, hasTouch: phone, deviceScaleFactor: 1 });
  context.setDefaultTimeout(30000);
  if (clipboard) await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: baseURL });
  const page = await context.newPage();
  const problems = [];
  const chats = [];
  const responses = []; // { path, status } of every /v1/ response
  page.on('pageerror', (e) => problems.push(`uncaught exception: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content.Security.Policy|Refused to/i.test(m.text())) problems.push(`console: ${m.text()}`);
  });
  page.on('request', (r) => {
    if (r.method() === 'POST' && new URL(r.url()).pathname === '/v1/chat/completions') {
      let body = null;
      try { body = JSON.parse(r.postData() ?? 'null'); } catch { body = { unparsable: r.postData() }; }
      chats.push({ body, request: r });
    }
  });
  page.on('response', (r) => {
    const { pathname } = new URL(r.url());
    if (pathname.startsWith('/v1/')) responses.push({ path: pathname, status: r.status() });
  });
  try {
    await page.goto(`${baseURL}/`);
    await page.locator('#composer').waitFor();
    if (waitModels) await modelsLoaded(page);
  } catch (e) {
    await screenshot(page, 'failed-page-load').catch(() => {});
    await context.close();
    throw e;
  }
  return { context, page, problems, chats, responses };
}

const modelsLoaded = (page) => until(
  () => page.$$eval('#model-select option', (os) => os.map((o) => o.value)),
  (ids) => ids.length > 0,
  'select#model-select lists the models of GET /v1/models',
);

// Runs fn with a fresh page; checks the page threw nothing and broke no CSP rule; screenshots a failure.
async function withPage(t, baseURL, opts, fn) {
  const p = await openPage(baseURL, opts);
  try {
    await fn(p);
    assert.deepEqual(p.problems, [], 'no uncaught exceptions or CSP violations in the page');
  } catch (e) {
    await screenshot(p.page, `failed-${t.name}`).catch(() => {});
    throw e;
  } finally {
    await p.context.close();
  }
}

// Everything a test looks at in #messages, in one round trip.
const readMessages = (page) => page.$$eval('#messages .msg', (els) => els.map((m) => {
  const details = m.querySelector('details.msg-reasoning');
  return {
    role: m.dataset.role,
    streaming: m.dataset.streaming ?? null,
    finish: m.dataset.finish ?? null,
    text: (m.querySelector('.msg-content')?.textContent ?? '').trim(),
    reasoning: details ? (details.querySelector('.reasoning-body')?.textContent ?? '').trim() : null,
    reasoningOpen: details ? details.open : null,
    stats: m.querySelector('.msg-stats')?.textContent.trim() ?? null,
    toolCalls: [...m.querySelectorAll('.tool-call')].map((c) => ({
      name: c.querySelector('.tool-name')?.textContent.trim() ?? null,
      args: c.querySelector('.tool-args')?.textContent ?? null,
      input: !!c.querySelector('textarea.tool-result-input'),
    })),
    toolResult: m.querySelector('.tool-result')?.textContent.trim() ?? null,
  };
}));

const assistants = async (page) => (await readMessages(page)).filter((m) => m.role === 'assistant');

// Waits until the assistant message number `index` (0-based) has finished; returns it.
async function waitAnswer(page, index, finish = null) {
  const list = await until(
    () => assistants(page),
    (as) => as.length > index && as[index].finish != null && as[index].streaming == null,
    `assistant message #${index} finished`,
  );
  const m = list[index];
  if (finish) assert.equal(m.finish, finish, `data-finish of assistant message #${index}: ${JSON.stringify(m)}`);
  return m;
}

// Types text into #prompt and clicks Send; returns the index the answer will have.
async function send(page, text) {
  const n = (await assistants(page)).length;
  await page.fill('#prompt', text);
  await page.click('#send');
  return n;
}

const SETTINGS = {
  system: '#set-system', temperature: '#set-temperature', topP: '#set-top-p', topK: '#set-top-k',
  minP: '#set-min-p', maxTokens: '#set-max-tokens', seed: '#set-seed', tools: '#set-tools',
};

// Opens the settings dialog, fills the given fields (strings), saves, and waits for the dialog to close.
async function setSettings(page, values) {
  await page.click('#settings-open');
  await page.locator('#settings').waitFor({ state: 'visible' });
  for (const [k, v] of Object.entries(values)) await page.fill(SETTINGS[k], v);
  await page.click('#settings-save');
  await page.locator('#settings').waitFor({ state: 'hidden' });
}

const readConvs = (page) => page.$$eval('#conv-list li.conv', (ls) => ls.map((l) => ({
  id: l.dataset.id,
  title: l.querySelector('.conv-open')?.textContent.trim() ?? null,
  current: l.getAttribute('aria-current') === 'true',
})));

// The li.conv whose title is exactly `title`.
const convItem = (page, title) => page.locator('#conv-list li.conv').filter({
  has: page.locator('.conv-open', { hasText: new RegExp(`^\\s*${title.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\s*$`) }),
});

// Whether #key-dialog is open or opens within a moment (the page handles a 401 it already received).
const askedForKey = (page) => page.locator('#key-dialog').waitFor({ state: 'visible', timeout: 3000 }).then(() => true, () => false);

// The text of #error while it is shown, else ''.
const shownError = async (page) => ((await page.locator('#error').isVisible()) ? (await page.locator('#error').textContent()).trim() : '');

const lastChat = (chats) => chats.at(-1)?.body;

// Waits until the answer to a recorded chat request has been received in full (so that a finished message seen next
// is the new answer, not the one it replaces).
async function responseDone(chat) {
  const res = await chat.request.response();
  await res?.finished();
}
const withoutSystem = (msgs) => msgs.filter((m) => m.role !== 'system');

// Controls (buttons, text fields, selects, ...) in Chromium's accessibility tree that have no accessible name.
async function unnamedControls(page) {
  const cdp = await page.context().newCDPSession(page);
  try {
    await cdp.send('DOM.getDocument', { depth: 0 });
    await cdp.send('Accessibility.enable');
    const { nodes } = await cdp.send('Accessibility.getFullAXTree');
    const roles = new Set(['button', 'textbox', 'combobox', 'listbox', 'checkbox', 'radio', 'spinbutton', 'slider',
      'searchbox', 'switch', 'menuitem', 'link', 'DisclosureTriangle', 'textField']);
    const unnamed = [];
    let named = 0;
    for (const n of nodes) {
      if (n.ignored || !roles.has(n.role?.value)) continue;
      if ((n.name?.value ?? '').trim()) { named++; continue; }
      let what = n.role.value;
      if (n.backendDOMNodeId) {
        const { node } = await cdp.send('DOM.describeNode', { backendNodeId: n.backendDOMNodeId });
        const attrs = [];
        for (let i = 0; i < (node.attributes ?? []).length; i += 2) attrs.push(`${node.attributes[i]}="${node.attributes[i + 1]}"`);
        what = `${n.role.value} <${node.localName} ${attrs.join(' ')}>`;
      }
      unnamed.push(what);
    }
    return { named, unnamed };
  } finally {
    await cdp.detach();
  }
}

// Every button, input, select and textarea in the document, shown or not, with no name of its own: aria-label,
// aria-labelledby, a <label>, title, or (buttons) text. Runs in the page.
function unnamedInDom() {
  const text = (e) => (e?.textContent ?? '').trim();
  const out = [];
  for (const el of document.querySelectorAll('button, input, select, textarea')) {
    if (el.type === 'hidden') continue;
    const byIds = (el.getAttribute('aria-labelledby') ?? '').split(/\s+/).filter(Boolean).map((id) => text(document.getElementById(id))).join(' ');
    const labels = [...(el.labels ?? [])].map(text).join(' ');
    const own = el.localName === 'button' || ['button', 'submit', 'reset'].includes(el.type) ? (text(el) || el.value || '') : '';
    if (!`${el.getAttribute('aria-label') ?? ''}${byIds}${labels}${el.title}${own}`.trim()) {
      out.push(el.outerHTML.slice(0, 120));
    }
  }
  return out;
}

// WCAG contrast of every visible text in the page (text nodes' elements and selects): the text color over the
// background composed up the tree (a background image makes it unknown: counted, not judged). Runs in the page.
function contrastInPage() {
  const canvas = document.createElement('canvas');
  canvas.width = canvas.height = 1;
  const g = canvas.getContext('2d', { willReadFrequently: true });
  const rgba = (css) => { // any CSS color (rgb, oklch, color-mix, ...) to sRGB bytes + alpha
    g.clearRect(0, 0, 1, 1);
    g.fillStyle = '#000';
    g.fillStyle = css;
    g.fillRect(0, 0, 1, 1);
    const d = g.getImageData(0, 0, 1, 1).data;
    const m = /rgba?\([^)]*[,/]\s*([\d.]+)(%?)\s*\)$/.exec(css); // exact alpha when the text says it
    const a = m && /rgba|\//.test(css) ? Number(m[1]) / (m[2] ? 100 : 1) : d[3] / 255;
    return [d[0], d[1], d[2], a];
  };
  const probe = document.createElement('div');
  probe.style.backgroundColor = 'Canvas';
  document.documentElement.append(probe);
  const canvasColor = rgba(getComputedStyle(probe).backgroundColor);
  probe.remove();
  const over = (top, bottom) => {
    const a = top[3] + bottom[3] * (1 - top[3]);
    if (a === 0) return [0, 0, 0, 0];
    return [0, 1, 2].map((i) => (top[i] * top[3] + bottom[i] * bottom[3] * (1 - top[3])) / a).concat(a);
  };
  const background = (el) => {
    const layers = [];
    for (let e = el; e; e = e.parentElement) {
      const cs = getComputedStyle(e);
      if (cs.backgroundImage !== 'none') return null;
      const c = rgba(cs.backgroundColor);
      if (c[3] > 0) layers.push(c);
      if (c[3] >= 1) break;
    }
    let bg = [...canvasColor.slice(0, 3), 1];
    for (let i = layers.length - 1; i >= 0; i--) bg = over(layers[i], bg);
    return bg;
  };
  const lum = (c) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]);
  };
  const name = (el) => {
    let s = el.localName + (el.id ? `#${el.id}` : '') + [...el.classList].map((c) => `.${c}`).join('');
    const anc = el.parentElement?.closest('[id]');
    if (anc && !el.id) s = `#${anc.id} … ${s}`;
    return s;
  };
  const failures = [];
  let checked = 0;
  let unknown = 0;
  for (const el of document.body.querySelectorAll('*')) {
    if (['script', 'style', 'option', 'template', 'noscript'].includes(el.localName)) continue;
    const hasText = el.localName === 'select' || [...el.childNodes].some((n) => n.nodeType === 3 && /\S/.test(n.textContent));
    if (!hasText) continue;
    if (!el.checkVisibility({ opacityProperty: true, visibilityProperty: true, contentVisibilityAuto: true })) continue;
    const r = el.getBoundingClientRect();
    if (r.width * r.height < 4) continue; // visually hidden (screen-reader only) text
    if (el.closest(':disabled')) continue; // WCAG exempts disabled controls
    const cs = getComputedStyle(el);
    const bg = background(el);
    if (!bg) { unknown++; continue; }
    const fg = over(rgba(cs.color), bg);
    const [hi, lo] = [lum(fg), lum(bg)].sort((a, b) => b - a);
    const ratio = (hi + 0.05) / (lo + 0.05);
    const size = parseFloat(cs.fontSize);
    const large = size >= 24 || (size >= 18.66 && Number(cs.fontWeight) >= 700);
    const need = large ? 3 : 4.5;
    checked++;
    if (ratio < need) {
      const text = (el.localName === 'select' ? el.selectedOptions[0]?.textContent : [...el.childNodes].filter((n) => n.nodeType === 3).map((n) => n.textContent).join(' ')) ?? '';
      failures.push(`${name(el)} "${text.trim().slice(0, 30)}": ${ratio.toFixed(2)} < ${need} (color ${cs.color} on rgb(${bg.slice(0, 3).map(Math.round).join(', ')}))`);
    }
  }
  return { checked, unknown, failures };
}

async function assertContrast(page, what) {
  const r = await page.evaluate(contrastInPage);
  assert.ok(r.checked >= 10, `${what}: contrast checked on ${r.checked} texts only (${r.unknown} over background images)`);
  assert.deepEqual(r.failures, [], `${what}: text below WCAG AA contrast (${r.checked} texts checked)`);
}

// 'shown' (entirely on screen), 'hidden' (not rendered, or entirely off screen) or 'moving'.
async function sidebarState(page) {
  const side = page.locator('aside#sidebar');
  if (!(await side.isVisible())) return 'hidden';
  const box = await side.boundingBox();
  const vw = page.viewportSize().width;
  if (!box || box.width === 0 || box.x + box.width <= 0 || box.x >= vw) return 'hidden';
  return box.x >= -1 && box.x + box.width <= vw + 1 ? 'shown' : 'moving';
}

// Whether a click at the middle of the element would reach it (nothing covers it); `top` names what is on top.
const hitTest = (page, selector) => page.evaluate((sel) => {
  const el = document.querySelector(sel);
  const r = el.getBoundingClientRect();
  const top = document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2);
  const name = (e) => (e ? e.localName + (e.id ? `#${e.id}` : '') + [...e.classList].map((c) => `.${c}`).join('') : 'nothing');
  return { ok: !!top && (top === el || el.contains(top)), top: `${name(top)} (in ${name(top?.closest('[id]'))})` };
}, selector);

// Box of a locator lies inside the viewport.
async function inViewport(page, locator) {
  const box = await locator.boundingBox();
  const { width, height } = page.viewportSize();
  return !!box && box.x >= -1 && box.y >= -1 && box.x + box.width <= width + 1 && box.y + box.height <= height + 1;
}

// What a browser's navigation asks for (GET / gives the page to a client that accepts HTML).
const HTML = { Accept: 'text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8' };

// Raw HTTP GET with exact request headers (no automatic decompression).
function get(url, headers = {}) {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { headers }, (res) => {
      const parts = [];
      res.on('data', (d) => parts.push(d));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(parts) }));
      res.on('error', reject);
    });
    req.on('error', reject);
  });
}

// Replaces, anywhere in a JSON value, every string equal to a key of `map` by its value.
function replaceStrings(v, map) {
  if (typeof v === 'string') return Object.hasOwn(map, v) ? map[v] : v;
  if (Array.isArray(v)) return v.map((x) => replaceStrings(x, map));
  if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, replaceStrings(x, map)]));
  return v;
}

const jsonHas = (v, s) => JSON.stringify(v).includes(JSON.stringify(s).slice(1, -1));

async function stopServer(server) {
  try {
    await server?.stop();
  } finally {
    server?.kill();
  }
}

before(async () => {
  // Failure screenshots of an earlier run would mislead.
  for (const f of readdirSync(artifactsDir())) if (/^failed-.*\.png$/.test(f)) rmSync(path.join(artifactsDir(), f));
  browser = await launchBrowser();
}, T);
after(async () => { await browser?.close(); });

// ---- serving: headers and --no-webui (plain HTTP, no browser) -----------------------------------------------------

describe('web page: how lokal serve serves it', () => {
  let server;
  let plain;
  before(async () => {
    server = await startServer();
    plain = await startServer(['--no-webui']);
  }, T);
  after(async () => {
    await stopServer(server);
    await stopServer(plain);
  });

  test('GET /: the page, its content type, CSP, nosniff and no-cache', T, async () => {
    const r = await get(server.url('/'), HTML);
    assert.equal(r.status, 200);
    assert.equal(r.headers['content-type'], 'text/html; charset=utf-8');
    const html = r.body.toString('utf8');
    assert.match(html, /id="composer"/);
    assert.equal(r.headers['x-content-type-options'], 'nosniff');
    assert.match(r.headers['cache-control'] ?? '', /no-cache/);
    const csp = r.headers['content-security-policy'] ?? '';
    const directives = Object.fromEntries(csp.split(';').map((d) => d.trim().split(/\s+/)).filter((d) => d[0]).map(([k, ...v]) => [k, v]));
    assert.deepEqual(directives['default-src'], ["'none'"], `default-src 'none' in ${csp}`);
    assert.ok(directives['script-src']?.includes("'self'"), `script-src 'self' in ${csp}`);
    assert.ok(!directives['script-src'].some((s) => /unsafe/.test(s)), `no unsafe-* script sources in ${csp}`);
    assert.ok(directives['connect-src']?.includes("'self'"), `connect-src 'self' in ${csp}`);
    for (const [k, sources] of Object.entries(directives)) {
      for (const s of sources) {
        assert.ok(/^('self'|'none'|'unsafe-inline'|'sha(256|384|512)-[^']+'|'nonce-[^']+'|data:|blob:)$/.test(s),
          `${k} allows nothing external (got ${s} in ${csp})`);
        if (s === "'unsafe-inline'") assert.equal(k, 'style-src', `'unsafe-inline' only for styles (${csp})`);
      }
    }
    // Every script and stylesheet is one of ours, under /ui/ (the page may add ?v=VERSION to bust caches).
    const refs = [...html.matchAll(/<(?:script[^>]*\ssrc|link[^>]*\shref)="([^"]+)"/g)].map((m) => m[1]);
    assert.ok(refs.some((u) => /^\/ui\/app\.js(\?|$)/.test(u)), `index.html loads /ui/app.js: ${refs}`);
    assert.ok(refs.some((u) => /^\/ui\/style\.css(\?|$)/.test(u)), `index.html loads /ui/style.css: ${refs}`);
    for (const u of refs) {
      assert.doesNotMatch(u, /^(https?:)?\/\//, `no external reference in index.html: ${u}`);
      const a = await get(new URL(u, server.url('/')).href);
      assert.equal(a.status, 200, `GET ${u}`);
    }
    const again = await get(server.url('/'), { ...HTML, 'If-None-Match': r.headers.etag ?? '"none"' });
    if (r.headers.etag) assert.equal(again.status, 304, 'index.html revalidates with its ETag');
  });

  test('GET /ui/*: content types, caching with ETag and 304, nosniff', T, async () => {
    // The asset URLs the page uses: with the query string index.html gives them (a version), if any.
    const html = (await get(server.url('/'), HTML)).body.toString('utf8');
    const query = /\/ui\/app\.js(\?[^"]*)?"/.exec(html)?.[1] ?? '';
    const types = {
      '/ui/app.js': 'text/javascript; charset=utf-8',
      '/ui/style.css': 'text/css; charset=utf-8',
      '/ui/vendor/marked.min.js': 'text/javascript; charset=utf-8',
      '/ui/vendor/highlight.min.js': 'text/javascript; charset=utf-8',
      '/ui/vendor/purify.min.js': 'text/javascript; charset=utf-8',
    };
    for (const [file, type] of Object.entries(types)) {
      const p = file + query;
      const r = await get(server.url(p));
      assert.equal(r.status, 200, `GET ${p}`);
      assert.equal(r.headers['content-type'], type, `Content-Type of ${p}`);
      assert.equal(r.headers['x-content-type-options'], 'nosniff', `nosniff on ${p}`);
      assert.match(r.headers['cache-control'] ?? '', /max-age=\d+/, `Cache-Control max-age on ${p}`);
      const etag = r.headers.etag;
      assert.ok(etag, `ETag on ${p}`);
      assert.ok(r.body.length > 100, `${p} has a body (${r.body.length} bytes)`);
      const again = await get(server.url(p), { 'If-None-Match': etag });
      assert.equal(again.status, 304, `If-None-Match: ${etag} on ${p}`);
      assert.equal(again.body.length, 0, `a 304 has no body (${p})`);
      const changed = await get(server.url(p), { 'If-None-Match': '"not-the-etag"' });
      assert.equal(changed.status, 200, `another ETag gets the file (${p})`);
      // The gzip representation revalidates with its own ETag.
      const gz = await get(server.url(p), { 'Accept-Encoding': 'gzip' });
      if (gz.headers['content-encoding'] === 'gzip') {
        const gz304 = await get(server.url(p), { 'Accept-Encoding': 'gzip', 'If-None-Match': gz.headers.etag });
        assert.equal(gz304.status, 304, `If-None-Match: ${gz.headers.etag} (gzip) on ${p}`);
      }
      // Without the version an asset still has a Cache-Control (revalidated or cached).
      if (query) assert.ok((await get(server.url(file))).headers['cache-control'], `Cache-Control on ${file}`);
    }
    const missing = await get(server.url('/ui/no-such-file.js'));
    assert.equal(missing.status, 404);
  });

  test('gzip when the request accepts it, identical once unpacked', T, async () => {
    for (const p of ['/', '/ui/app.js', '/ui/style.css', '/ui/vendor/highlight.min.js']) {
      const identity = await get(server.url(p), HTML);
      assert.equal(identity.headers['content-encoding'], undefined, `no Content-Encoding without Accept-Encoding (${p})`);
      const gz = await get(server.url(p), { ...HTML, 'Accept-Encoding': 'gzip, deflate, br, zstd' }); // as Chromium asks
      assert.equal(gz.status, 200);
      assert.equal(gz.headers['content-encoding'], 'gzip', `Content-Encoding of ${p}`);
      assert.match(gz.headers.vary ?? '', /accept-encoding/i, `Vary: Accept-Encoding on ${p}`);
      assert.ok(zlib.gunzipSync(gz.body).equals(identity.body), `${p}: the gzip body unpacks to the file`);
    }
  });

  test('--no-webui: / answers plain text and /ui/ is gone', T, async () => {
    const r = await get(plain.url('/'), HTML);
    assert.equal(r.status, 200);
    assert.match(r.headers['content-type'] ?? '', /^text\/plain/);
    assert.match(r.body.toString(), /lokal is running/);
    assert.doesNotMatch(r.body.toString(), /composer/);
    assert.equal((await get(plain.url('/ui/app.js'))).status, 404);
    assert.equal((await get(plain.url('/ui/style.css'))).status, 404);
  });
});

// ---- the page against one server with two model names -------------------------------------------------------------

describe('web page: chatting', () => {
  let server;
  let gate; // a stream gate in front of the server, for the tests that watch an answer grow
  before(async () => {
    server = await startServer(['-a', 'tinychat', '-a', 'other-name']);
    gate = await startStreamGate(server.baseURL);
  }, T);
  after(async () => {
    await gate?.close();
    await stopServer(server);
  });

  test('a message streams in piece by piece and ends with the greedy answer and a stats line', T, async (t) => {
    // The greedy answer, straight from the server, to compare with. A story rather than a one-line answer: the
    // server may put several tokens in one event, and a story still gives dozens of events.
    const direct = await (await fetch(server.url('/v1/chat/completions'), {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ model: 'tinychat', temperature: 0, messages: [{ role: 'user', content: STORY_Q }] }),
    })).json();
    const want = direct.choices[0].message.content;
    const norm = (x) => x.replace(/\s+/g, ' ').trim();
    await withPage(t, gate.baseURL, {}, async ({ page, chats }) => {
      assert.equal(await page.locator('#error').isVisible(), false, '#error is hidden while empty');
      await setSettings(page, { temperature: '0' });
      gate.hold();
      try {
        const idx = await send(page, STORY_Q);
        const s = await gate.nextStream();
        const body = lastChat(chats);
        assert.equal(body.stream, true);
        assert.deepEqual(body.stream_options, { include_usage: true });
        assert.equal(body.model, 'tinychat', 'the first model of /v1/models is the default');
        assert.deepEqual(body.messages, [{ role: 'user', content: STORY_Q }]);
        assert.equal(body.temperature, 0);
        for (const k of ['top_p', 'top_k', 'min_p', 'max_tokens', 'seed', 'tools']) {
          assert.ok(!(k in body), `${k} is not sent when its setting is empty: ${JSON.stringify(body)}`);
        }
        await until(() => readMessages(page), (ms) => ms[0]?.role === 'user' && ms[0].text === STORY_Q, 'the user message is shown');

        // Release the events one by one; each new piece of text must show while the message is still streaming.
        const seen = [];
        let contentEvents = 0;
        for (;;) {
          const evs = await s.release(1);
          if (evs.length === 0) break;
          const expected = norm(s.content());
          if (!expected || expected === seen.at(-1) || s.chunks().some((c) => c.choices?.[0]?.finish_reason)) continue;
          contentEvents++;
          const m = await until(async () => (await assistants(page))[idx], (a) => a && norm(a.text) === expected,
            `the streaming answer shows ${JSON.stringify(expected)}`);
          assert.equal(m.streaming, 'true', `data-streaming="true" while the answer grows: ${JSON.stringify(m)}`);
          if (seen.length === 0) assert.equal(await page.locator('#stop').isVisible(), true, '#stop is visible while streaming');
          seen.push(expected);
        }
        assert.ok(seen.length >= Math.min(3, contentEvents), `the answer grew over several observations: ${JSON.stringify(seen)}`);
        const done = await waitAnswer(page, idx, 'stop');
        assert.equal(norm(done.text), norm(want), 'the greedy answer');
        assert.equal(await page.locator('#stop').isVisible(), false, '#stop is hidden after the answer');
        const usage = s.chunks().at(-1).usage;
        assert.ok(usage, 'the stream ended with usage (include_usage)');
        assert.match(done.stats ?? '', /tokens\/s/, `stats: ${done.stats}`);
        assert.match(done.stats, /TTFT/, `stats: ${done.stats}`);
        const ctx = /context\s+([\d,]+)\s*\/\s*([\d,]+)/.exec(done.stats);
        assert.ok(ctx, `stats show "context N / M": ${done.stats}`);
        assert.equal(Number(ctx[1].replace(/,/g, '')), usage.total_tokens, `context N is the tokens used (${JSON.stringify(usage)})`);
        assert.equal(Number(ctx[2].replace(/,/g, '')), N_CTX, 'context M is the server n_ctx');
      } finally {
        gate.pass();
      }
    });
  });

  test('Stop keeps the partial answer, frees the server, and the next message works', T, async (t) => {
    await withPage(t, gate.baseURL, {}, async ({ page, chats }) => {
      await setSettings(page, { maxTokens: '400' });
      gate.hold();
      let partial;
      try {
        const idx = await send(page, STORY_Q);
        const s = await gate.nextStream();
        assert.equal(lastChat(chats).max_tokens, 400);
        while (s.content().trim().split(/\s+/).length < 4) {
          assert.ok((await s.release(1)).length > 0, 'the story has more than 4 words');
        }
        partial = s.content().trim();
        await until(async () => (await assistants(page))[idx], (a) => a?.text === partial && a.streaming === 'true',
          'the partial answer is shown while streaming');
        assert.deepEqual((await unnamedControls(page)).unnamed, [], 'every control has an accessible name while streaming');
        await page.click('#stop');
        assert.equal(await within(s.clientClosed, 30000, 'the page closes the stream on Stop'), true,
          'Stop aborts the request (the connection closes before the stream ends)');
        const m = await waitAnswer(page, idx, 'stopped');
        assert.equal(m.text, partial, 'the partial answer stays');
        assert.equal(await page.locator('#stop').isVisible(), false, '#stop is hidden after Stop');
      } finally {
        gate.pass();
      }
      await waitIdle(server, 30000);

      const next = await send(page, FRANCE_Q);
      const m2 = await waitAnswer(page, next, 'stop');
      assert.match(m2.text, /\S/);
      const body = lastChat(chats);
      assert.deepEqual(body.messages.at(-1), { role: 'user', content: FRANCE_Q });
      const prev = body.messages.at(-2);
      assert.equal(prev?.role, 'assistant', `the stopped answer is part of the conversation: ${JSON.stringify(body.messages)}`);
      assert.equal(prev.content.trim(), partial);
      assert.equal((await assistants(page))[0].text, partial, 'the stopped answer is still shown');
    });
  });

  test('model choice: the select lists both names, the choice is sent and kept per conversation across a reload', T, async (t) => {
    await withPage(t, server.baseURL, {}, async ({ page, chats }) => {
      const ids = await page.$$eval('#model-select option', (os) => os.map((o) => o.value));
      assert.deepEqual(ids, ['tinychat', 'other-name']);
      await page.selectOption('#model-select', 'other-name');
      await waitAnswer(page, await send(page, FRANCE_Q), 'stop');
      assert.equal(lastChat(chats).model, 'other-name');

      await page.click('#new-chat');
      await until(() => readMessages(page), (ms) => ms.length === 0, 'a new chat has no messages');
      await page.selectOption('#model-select', 'tinychat');
      await waitAnswer(page, await send(page, STORY_Q), 'stop');
      assert.equal(lastChat(chats).model, 'tinychat');

      await page.reload();
      await modelsLoaded(page);
      for (const [title, model] of [[FRANCE_Q, 'other-name'], [STORY_Q, 'tinychat'], [FRANCE_Q, 'other-name']]) {
        await convItem(page, title).locator('.conv-open').click();
        await until(() => readMessages(page), (ms) => ms[0]?.text === title, `conversation "${title}" is open`);
        assert.equal(await page.inputValue('#model-select'), model, `the model of "${title}"`);
      }
      await waitAnswer(page, await send(page, 'And the capital of Germany?'), 'stop');
      assert.equal(lastChat(chats).model, 'other-name', 'the restored choice is sent');
    });
  });

  test('reasoning_content shows in a details.msg-reasoning apart from the answer', T, async (t) => {
    // What the server answers to the same request, to compare with.
    const direct = await (await fetch(server.url('/v1/chat/completions'), {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ model: 'tinychat', temperature: 0, messages: [{ role: 'system', content: THINK_SYSTEM }, { role: 'user', content: FRANCE_Q }] }),
    })).json();
    const want = direct.choices[0].message;
    assert.match(want.reasoning_content ?? '', /\S/, 'the server gives reasoning_content for this prompt');

    await withPage(t, server.baseURL, {}, async ({ page, chats }) => {
      await setSettings(page, { system: THINK_SYSTEM, temperature: '0' });
      const m = await waitAnswer(page, await send(page, FRANCE_Q), 'stop');
      assert.deepEqual(lastChat(chats).messages, [{ role: 'system', content: THINK_SYSTEM }, { role: 'user', content: FRANCE_Q }]);
      assert.notEqual(m.reasoning, null, 'a details.msg-reasoning');
      assert.equal(m.reasoning.replace(/\s+/g, ' '), want.reasoning_content.trim().replace(/\s+/g, ' '), '.reasoning-body holds the reasoning');
      assert.equal(m.reasoningOpen, false, 'the reasoning is collapsed once the answer ended');
      assert.equal(m.text, want.content.trim(), 'the answer alone is in .msg-content');
      assert.doesNotMatch(m.text, /think>/);
      assert.equal(await page.locator('details.msg-reasoning summary').count(), 1, 'the reasoning has a summary');
      // The system prompt is a setting, not a shown message.
      assert.deepEqual((await readMessages(page)).map((x) => x.role), ['user', 'assistant']);
    });
  });

  test('a tool call renders and its result, answered in the page, continues the conversation', T, async (t) => {
    await withPage(t, server.baseURL, {}, async ({ page, chats }) => {
      // Invalid JSON in the tools setting is refused inside the dialog.
      await page.click('#settings-open');
      await page.locator('#settings').waitFor({ state: 'visible' });
      await page.fill('#set-tools', '[{"type": "function",');
      await page.click('#settings-save');
      await until(async () => ({
        error: (await page.locator('#settings-error').textContent())?.trim() ?? '',
        open: await page.locator('#settings').isVisible(),
        errorVisible: await page.locator('#settings-error').isVisible(),
      }), (s) => s.error.length > 0 && s.errorVisible, 'invalid tools JSON shows #settings-error');
      assert.equal(await page.locator('#settings').isVisible(), true, 'the dialog stays open on invalid tools JSON');
      await page.click('#settings-cancel');
      await page.locator('#settings').waitFor({ state: 'hidden' });
      await page.click('#settings-open');
      assert.equal(await page.inputValue('#set-tools'), '', 'the invalid tools were not saved');
      await page.click('#settings-cancel');
      await page.locator('#settings').waitFor({ state: 'hidden' });

      await setSettings(page, { tools: JSON.stringify([GET_WEATHER], null, 2), temperature: '0' });
      const first = page.waitForResponse((r) => r.url().endsWith('/v1/chat/completions'));
      const m = await waitAnswer(page, await send(page, WEATHER_Q), 'tool_calls');
      assert.deepEqual(lastChat(chats).tools, [GET_WEATHER], 'the tools are sent');
      const sse = await (await first).text();
      const streamed = [...sse.matchAll(/"id":"(call_[^"]+)"/g)].map((x) => x[1]);
      assert.equal(m.toolCalls.length, 1, `one .tool-call: ${JSON.stringify(m)}`);
      const [call] = m.toolCalls;
      assert.equal(call.name, 'get_weather');
      assert.match(call.args, /"city"/);
      assert.match(call.args, /\n/, '.tool-args is pretty-printed JSON');
      assert.equal(typeof JSON.parse(call.args).city, 'string');
      assert.equal(call.input, true, 'an unanswered call has a textarea.tool-result-input');
      assert.deepEqual((await unnamedControls(page)).unnamed, [], 'the tool result controls have accessible names');

      await page.fill('.tool-call textarea.tool-result-input', '{"temperature": 21}');
      await page.click('.tool-call button.tool-result-send');
      const answer = await waitAnswer(page, 1, 'stop');
      assert.match(answer.text, /\S/, 'a new assistant answer after the tool result');
      const msgs = lastChat(chats).messages;
      const a = msgs.find((x) => x.role === 'assistant' && x.tool_calls?.length);
      assert.ok(a, `the assistant's tool call is sent back: ${JSON.stringify(msgs)}`);
      assert.equal(a.tool_calls[0].function.name, 'get_weather');
      assert.deepEqual(JSON.parse(a.tool_calls[0].function.arguments), JSON.parse(call.args));
      assert.ok(streamed.includes(a.tool_calls[0].id), `the call id is the server's (${streamed})`);
      const tool = msgs.at(-1);
      assert.deepEqual(tool, { role: 'tool', tool_call_id: a.tool_calls[0].id, content: '{"temperature": 21}' });
      const all = await readMessages(page);
      assert.deepEqual(all.map((x) => x.role), ['user', 'assistant', 'tool', 'assistant']);
      assert.match(all[2].toolResult ?? '', /21/, 'the tool message shows .tool-result');
      assert.equal(all[1].toolCalls[0].input, false, 'an answered call has no input any more');
    });
  });

  test('edit an earlier message, regenerate the last answer, copy, Enter and Shift+Enter', T, async (t) => {
    await withPage(t, server.baseURL, { clipboard: true }, async ({ page, chats }) => {
      await setSettings(page, { temperature: '0', topP: '0.9', topK: '40', minP: '0.05', maxTokens: '64', seed: '7' });
      // Enter sends.
      await page.fill('#prompt', FRANCE_Q);
      await page.press('#prompt', 'Enter');
      assert.equal((await waitAnswer(page, 0, 'stop')).text, PARIS);
      const body = lastChat(chats);
      for (const [k, v] of Object.entries({ temperature: 0, top_p: 0.9, top_k: 40, min_p: 0.05, max_tokens: 64, seed: 7 })) {
        assert.equal(body[k], v, `${k} is sent as a number: ${JSON.stringify(body)}`);
      }
      // Shift+Enter inserts a newline and sends nothing.
      await page.fill('#prompt', 'Tell me a short story');
      await page.press('#prompt', 'Shift+Enter');
      await page.locator('#prompt').pressSequentially('about a cat.');
      assert.equal(await page.inputValue('#prompt'), 'Tell me a short story\nabout a cat.');
      assert.equal(chats.length, 1, 'Shift+Enter sent nothing');
      await page.press('#prompt', 'Enter');
      await waitAnswer(page, 1, 'stop');
      assert.equal(await page.inputValue('#prompt'), '', 'the prompt is cleared after sending');
      assert.deepEqual(lastChat(chats).messages.at(-1), { role: 'user', content: 'Tell me a short story\nabout a cat.' });

      // Copy puts the raw text on the clipboard.
      await page.locator('.msg[data-role="assistant"]').first().locator('.msg-copy').click();
      await until(() => page.evaluate(() => navigator.clipboard.readText()), (s) => s === PARIS, 'the answer is on the clipboard');
      await page.locator('.msg[data-role="user"]').nth(1).locator('.msg-copy').click();
      await until(() => page.evaluate(() => navigator.clipboard.readText()), (s) => s === 'Tell me a short story\nabout a cat.',
        'the user message (with its newline) is on the clipboard');

      // Regenerate: only on the last answer; the request repeats the one that produced it.
      const regen = page.locator('#messages button.msg-regenerate:visible');
      assert.equal(await regen.count(), 1, 'one visible Regenerate button');
      assert.equal(await page.locator('.msg[data-role="assistant"]').last().locator('button.msg-regenerate:visible').count(), 1,
        'Regenerate is on the last assistant message');
      const before = lastChat(chats);
      const n = chats.length;
      const oldText = (await assistants(page))[1].text;
      await regen.click();
      await until(async () => chats.length, (c) => c > n, 'Regenerate sends a request');
      assert.deepEqual(lastChat(chats).messages, before.messages, 'the same messages, minus the dropped answer');
      await responseDone(chats.at(-1));
      const again = await waitAnswer(page, 1, 'stop');
      assert.equal(again.text, oldText, 'greedy: the same answer again');
      assert.equal((await readMessages(page)).length, 4, 'the old answer was replaced, not kept');

      // Edit: Cancel leaves everything; Save replaces the message, drops what follows and answers again.
      const firstUser = page.locator('.msg[data-role="user"]').first();
      await firstUser.locator('.msg-edit').click();
      assert.equal(await firstUser.locator('textarea.msg-edit-input').inputValue(), FRANCE_Q);
      assert.deepEqual((await unnamedControls(page)).unnamed, [], 'the edit controls have accessible names');
      await firstUser.locator('.msg-edit-cancel').click();
      await firstUser.locator('textarea.msg-edit-input').waitFor({ state: 'detached' });
      assert.equal((await readMessages(page)).length, 4, 'Cancel changes nothing');
      const edited = 'What is the capital of Germany?';
      await firstUser.locator('.msg-edit').click();
      await firstUser.locator('textarea.msg-edit-input').fill(edited);
      const m = chats.length;
      await firstUser.locator('.msg-edit-save').click();
      await until(async () => chats.length, (c) => c > m, 'Save sends a request');
      assert.deepEqual(withoutSystem(lastChat(chats).messages), [{ role: 'user', content: edited }]);
      await responseDone(chats.at(-1));
      await waitAnswer(page, 0, 'stop');
      const after = await readMessages(page);
      assert.deepEqual(after.map((x) => x.role), ['user', 'assistant'], 'the messages after the edited one are gone');
      assert.equal(after[0].text, edited);
    });
  });

  test('accessibility: names, Tab order, contrast in both themes; screenshots', T, async (t) => {
    await withPage(t, server.baseURL, {}, async ({ page }) => {
      await setSettings(page, { system: THINK_SYSTEM, temperature: '0' });
      await waitAnswer(page, await send(page, FRANCE_Q), 'stop');
      await page.click('#new-chat');
      await waitAnswer(page, await send(page, 'Tell me a short story about a dog.'), 'stop');

      const names = await unnamedControls(page);
      assert.deepEqual(names.unnamed, [], 'every control has an accessible name');
      assert.deepEqual(await page.evaluate(unnamedInDom), [], 'every control, shown or hidden, has a label, aria-label or text');
      assert.ok(names.named >= 10, `named controls found: ${names.named}`);
      await page.click('#settings-open');
      await page.locator('#settings').waitFor({ state: 'visible' });
      assert.deepEqual((await unnamedControls(page)).unnamed, [], 'every control of the settings dialog has an accessible name');
      await page.click('#settings-cancel');
      await page.locator('#settings').waitFor({ state: 'hidden' });

      await page.fill('#prompt', 'hello');
      await page.focus('#prompt');
      const visited = [];
      for (let i = 0; i < 6 && visited.at(-1) !== 'send'; i++) {
        await page.keyboard.press('Tab');
        visited.push(await page.evaluate(() => document.activeElement?.id || document.activeElement?.className || document.activeElement?.localName));
      }
      assert.equal(visited.at(-1), 'send', `Tab from #prompt reaches #send: ${visited}`);
      assert.equal((await readMessages(page)).length, 2, 'tabbing sent nothing');
      await page.fill('#prompt', '');

      // Open the first conversation again so that the reasoning and stats are on screen.
      await convItem(page, FRANCE_Q).locator('.conv-open').click();
      await until(() => readMessages(page), (ms) => ms[0]?.text === FRANCE_Q, 'the first conversation is open');
      const theme = () => page.evaluate(() => document.documentElement.dataset.theme);
      const first = await theme();
      assert.ok(['dark', 'light'].includes(first), `data-theme: ${first}`);
      await assertContrast(page, `${first} theme`);
      await screenshot(page, `desktop-${first}`);
      await page.click('#theme-toggle');
      const second = await until(theme, (v) => v !== first, '#theme-toggle flips data-theme');
      assert.ok(['dark', 'light'].includes(second), `data-theme: ${second}`);
      await page.reload();
      await modelsLoaded(page);
      assert.equal(await theme(), second, 'the theme survives a reload');
      await convItem(page, FRANCE_Q).locator('.conv-open').click();
      await until(() => readMessages(page), (ms) => ms[0]?.text === FRANCE_Q, 'the first conversation is open');
      await assertContrast(page, `${second} theme`);
      await screenshot(page, `desktop-${second}`);
    });
  });

  test('phone viewport: the sidebar toggles, composer and messages fit and work; screenshots', T, async (t) => {
    await withPage(t, server.baseURL, { viewport: { width: 390, height: 844 }, phone: true }, async ({ page }) => {
      const soft = []; // contract misses that do not stop the rest of the test
      const toggle = page.locator('#sidebar-toggle');
      assert.equal(await toggle.isVisible(), true, '#sidebar-toggle is shown on a phone');
      const settled = (want) => until(() => sidebarState(page), (v) => v === want, `the sidebar is ${want}`);
      // Taps #sidebar-toggle if nothing covers it; otherwise notes the miss and hides the sidebar with Escape.
      const flip = async (want) => {
        const hit = await hitTest(page, '#sidebar-toggle');
        if (hit.ok) {
          await toggle.tap();
        } else {
          soft.push(`#sidebar-toggle cannot ${want === 'hidden' ? 'hide' : 'show'} the sidebar: ${hit.top} covers it`);
          await page.keyboard.press('Escape');
        }
        await settled(want);
      };
      const start = await until(() => sidebarState(page), (v) => v !== 'moving', 'the sidebar settles');
      if (start === 'shown') await flip('hidden');
      await flip('shown');
      assert.equal(await inViewport(page, page.locator('#new-chat')), true, '#new-chat is on screen in the shown sidebar');
      await flip('hidden');

      assert.equal(await inViewport(page, page.locator('#prompt')), true, '#prompt is on screen');
      assert.equal(await inViewport(page, page.locator('#send')), true, '#send is on screen');
      await page.locator('#prompt').tap();
      await page.fill('#prompt', STORY_Q);
      await page.locator('#send').tap();
      const m = await waitAnswer(page, 0, 'stop');
      assert.match(m.text, /\S/);
      const last = page.locator('#messages .msg[data-role="assistant"]').last();
      await last.scrollIntoViewIfNeeded();
      const box = await last.boundingBox();
      assert.ok(box.x >= 0 && box.x + box.width <= 391, `the answer fits the width: ${JSON.stringify(box)}`);
      const scrollW = await page.evaluate(() => document.documentElement.scrollWidth);
      assert.ok(scrollW <= 391, `no horizontal scrolling (scrollWidth ${scrollW})`);
      for (const sel of ['#prompt', '#send', '#sidebar-toggle', '#model-select', '#settings-open']) {
        assert.equal(await inViewport(page, page.locator(sel)), true, `${sel} is on screen after an answer`);
      }

      const theme = () => page.evaluate(() => document.documentElement.dataset.theme);
      const first = await theme();
      await screenshot(page, `phone-${first}`);
      // The theme toggle may live in the sidebar on a phone.
      const themeToggle = page.locator('#theme-toggle');
      const inSidebar = !((await themeToggle.isVisible()) && (await inViewport(page, themeToggle)));
      if (inSidebar) await flip('shown');
      await themeToggle.tap();
      await until(theme, (v) => v !== first, '#theme-toggle flips data-theme');
      if (inSidebar) await flip('hidden');
      await screenshot(page, `phone-${await theme()}`);
      assert.deepEqual(soft, [], 'phone sidebar');
    });
  });
});

// ---- conversations: one page through a sequence of steps ----------------------------------------------------------

describe('web page: conversations', () => {
  let server;
  let p; // { context, page, problems, chats }, shared by the steps below
  let exported; // the first conversation as its export file gave it
  before(async () => {
    server = await startServer();
    p = await openPage(server.baseURL, { clipboard: true });
  }, T);
  after(async () => {
    try {
      if (p) assert.deepEqual(p.problems, [], 'no uncaught exceptions or CSP violations in the page');
    } finally {
      await p?.context.close();
      await stopServer(server);
    }
  });
  const step = (name, fn) => test(name, T, async (t) => {
    try {
      await fn(p.page);
    } catch (e) {
      await screenshot(p.page, `failed-${t.name}`).catch(() => {});
      throw e;
    }
  });
  const LONG_Q = 'Please tell me a short story about a brave little cat who lives on a farm near the big river.';
  const reopen = async (page) => {
    await page.reload();
    await modelsLoaded(page);
  };
  const openConv = async (page, title, firstText = title) => {
    await convItem(page, title).locator('.conv-open').click();
    await until(() => readMessages(page), (ms) => ms[0]?.text === firstText, `conversation "${title}" shows its messages`);
    await until(() => readConvs(page), (cs) => cs.find((c) => c.title === title)?.current === true, `"${title}" is aria-current`);
  };

  step('titles come from the first message; the list and messages survive a reload; switching', async (page) => {
    await setSettings(page, { temperature: '0' });
    assert.equal((await waitAnswer(page, await send(page, FRANCE_Q), 'stop')).text, PARIS);
    await page.click('#new-chat');
    await until(() => readMessages(page), (ms) => ms.length === 0, 'a new chat is empty');
    await waitAnswer(page, await send(page, STORY_Q), 'stop');
    await page.click('#new-chat');
    await waitAnswer(page, await send(page, LONG_Q), 'stop');

    let convs = await until(() => readConvs(page), (cs) => cs.length === 3, 'three conversations');
    const titles = convs.map((c) => c.title);
    assert.ok(titles.includes(FRANCE_Q) && titles.includes(STORY_Q), `titles: ${JSON.stringify(titles)}`);
    const long = titles.find((x) => x !== FRANCE_Q && x !== STORY_Q);
    assert.ok(long.length >= 30 && long.length <= 45, `a long first message gives a ~40 character title: "${long}"`);
    assert.ok(LONG_Q.startsWith(long.replace(/(\s*(…|\.\.\.))$/, '')), `the title is the message's start: "${long}"`);
    assert.equal(convs.find((c) => c.title === long).current, true, 'the newest conversation is aria-current');
    assert.equal(convs.filter((c) => c.current).length, 1, 'one aria-current conversation');
    assert.equal(new Set(convs.map((c) => c.id)).size, 3, `distinct data-id: ${JSON.stringify(convs)}`);

    await reopen(page);
    convs = await until(() => readConvs(page), (cs) => cs.length === 3, 'three conversations after a reload');
    assert.deepEqual(new Set(convs.map((c) => c.title)), new Set(titles));
    await openConv(page, FRANCE_Q);
    assert.deepEqual((await readMessages(page)).map((m) => [m.role, m.text]), [['user', FRANCE_Q], ['assistant', PARIS]]);
    await openConv(page, STORY_Q);
    const story = await readMessages(page);
    assert.deepEqual(story.map((m) => m.role), ['user', 'assistant']);
    assert.match(story[1].text, /\S/);
    assert.ok(!story.some((m) => m.text === PARIS), 'the other conversation\'s messages are gone');
    await openConv(page, FRANCE_Q);
  });

  step('rename: Enter saves, Escape cancels, the name survives a reload', async (page) => {
    const item = convItem(page, FRANCE_Q);
    await item.locator('.conv-rename').click();
    const input = page.locator('#conv-list input.conv-rename-input');
    await input.waitFor();
    assert.deepEqual((await unnamedControls(page)).unnamed, [], 'the rename input has an accessible name');
    await input.fill('Renamed chat');
    await input.press('Enter');
    await input.waitFor({ state: 'detached' });
    await until(() => readConvs(page), (cs) => cs.some((c) => c.title === 'Renamed chat'), 'the new name shows');

    await convItem(page, STORY_Q).locator('.conv-rename').click();
    await input.waitFor();
    await input.fill('Not this name');
    await input.press('Escape');
    await input.waitFor({ state: 'detached' });
    const convs = await readConvs(page);
    assert.ok(convs.some((c) => c.title === STORY_Q), `Escape keeps the name: ${JSON.stringify(convs)}`);
    assert.ok(!convs.some((c) => c.title === 'Not this name'));

    await reopen(page);
    const after = await until(() => readConvs(page), (cs) => cs.length === 3, 'three conversations');
    assert.ok(after.some((c) => c.title === 'Renamed chat'), `the new name survives a reload: ${JSON.stringify(after)}`);
    assert.ok(!after.some((c) => c.title === FRANCE_Q));
  });

  step('delete: the first click arms, the second deletes', async (page) => {
    const long = (await readConvs(page)).find((c) => c.title !== 'Renamed chat' && c.title !== STORY_Q).title;
    const del = convItem(page, long).locator('.conv-delete');
    await del.click();
    await until(async () => `${await del.textContent()} ${await del.getAttribute('aria-label')}`, (s) => /confirm delete/i.test(s),
      'the armed delete button says "Confirm delete"');
    assert.equal((await readConvs(page)).length, 3, 'one click deletes nothing');
    await del.click();
    await until(() => readConvs(page), (cs) => cs.length === 2 && !cs.some((c) => c.title === long), 'the conversation is gone');
    await reopen(page);
    const after = await until(() => readConvs(page), (cs) => cs.length === 2, 'two conversations after a reload');
    assert.ok(!after.some((c) => c.title === long), `deleted for good: ${JSON.stringify(after)}`);
  });

  step('export one conversation, delete it, import it back', async (page) => {
    await openConv(page, 'Renamed chat', FRANCE_Q);
    const dl = page.waitForEvent('download');
    await convItem(page, 'Renamed chat').locator('.conv-export').click();
    const file = await dl;
    assert.match(file.suggestedFilename(), /\.json$/, `file name: ${file.suggestedFilename()}`);
    exported = JSON.parse(await readFile(await file.path(), 'utf8'));
    assert.ok(exported && typeof exported === 'object' && !Array.isArray(exported), 'one conversation exports as an object');
    assert.ok(jsonHas(exported, FRANCE_Q) && jsonHas(exported, PARIS), `the export holds the messages: ${JSON.stringify(exported).slice(0, 500)}`);
    assert.ok(jsonHas(exported, 'Renamed chat'), 'the export holds the title');

    const del = convItem(page, 'Renamed chat').locator('.conv-delete');
    await del.click();
    await del.click();
    await until(() => readConvs(page), (cs) => cs.length === 1, 'the exported conversation is deleted');
    await until(() => readMessages(page), (ms) => !ms.some((m) => m.text === PARIS), 'the deleted conversation\'s messages are not shown');

    await page.setInputFiles('#import-file', { name: 'chat.json', mimeType: 'application/json', buffer: Buffer.from(JSON.stringify(exported)) });
    await until(() => readConvs(page), (cs) => cs.length === 2 && cs.some((c) => c.title === 'Renamed chat'), 'the imported conversation is listed');
    await openConv(page, 'Renamed chat', FRANCE_Q);
    assert.deepEqual((await readMessages(page)).map((m) => [m.role, m.text]), [['user', FRANCE_Q], ['assistant', PARIS]]);
  });

  step('export all; import an array; Markdown renders highlighted, sanitized, with code copy', async (page) => {
    const dl = page.waitForEvent('download');
    await page.click('#export-all');
    const all = JSON.parse(await readFile(await (await dl).path(), 'utf8'));
    assert.ok(Array.isArray(all), 'export-all gives an array');
    assert.equal(all.length, 2);

    const md = [
      'Here is **bold** text and code:',
      '',
      '```js',
      'const x = 1;',
      '```',
      '',
      '<img src="x" onerror="window.__xss = 1"> <script>window.__xss = 2</script> [link](javascript:window.__xss=3)',
    ].join('\n');
    const variant = (title, suffix) => {
      const c = replaceStrings(exported, { [PARIS]: md, 'Renamed chat': title });
      if ('id' in c) c.id = typeof c.id === 'number' ? c.id + 1000 + suffix : `${c.id}-${suffix}`;
      return c;
    };
    const file = [variant('Markdown chat', 1), variant('Second import', 2)];
    await page.setInputFiles('#import-file', { name: 'all.json', mimeType: 'application/json', buffer: Buffer.from(JSON.stringify(file)) });
    await until(() => readConvs(page), (cs) => cs.length === 4, 'an imported array adds each conversation');
    await openConv(page, 'Markdown chat', FRANCE_Q);

    const a = page.locator('#messages .msg[data-role="assistant"] .msg-content');
    assert.equal(await a.locator('strong').textContent(), 'bold');
    assert.equal(await a.locator('pre > code.hljs').count(), 1, 'a code block is pre > code.hljs');
    assert.match(await a.locator('pre > code').textContent(), /const x = 1;/);
    await until(() => a.locator('pre > code [class^="hljs-"]').count(), (n) => n > 0, 'the code is highlighted (highlight.js ran)');
    assert.equal(await a.locator('pre button.code-copy').count(), 1, 'the block has a button.code-copy');
    const unsafe = await page.evaluate(() => ({
      xss: window.__xss ?? null,
      scripts: document.querySelectorAll('#messages script').length,
      handlers: [...document.querySelectorAll('#messages *')].filter((e) => [...e.attributes].some((at) => /^on/i.test(at.name))).length,
      jsLinks: document.querySelectorAll('#messages [href^="javascript:" i], #messages [src^="javascript:" i]').length,
    }));
    assert.deepEqual(unsafe, { xss: null, scripts: 0, handlers: 0, jsLinks: 0 }, 'the Markdown is sanitized');

    await a.locator('pre button.code-copy').click();
    await until(() => page.evaluate(() => navigator.clipboard.readText()), (s) => s.trim() === 'const x = 1;', 'the code is on the clipboard');
    await page.locator('.msg[data-role="assistant"] .msg-copy').click();
    await until(() => page.evaluate(() => navigator.clipboard.readText()), (s) => s === md, 'Copy gives the raw Markdown');
  });
});

// ---- API key ------------------------------------------------------------------------------------------------------

describe('web page: API key prompt', () => {
  let server;
  before(async () => { server = await startServer(['--api-key', 'secret123']); }, T);
  after(() => stopServer(server));

  test('a 401 asks for the key once; a wrong key is refused; the right one is kept across reloads', T, async (t) => {
    await withPage(t, server.baseURL, { waitModels: false }, async ({ page, chats, responses }) => {
      const dialog = page.locator('#key-dialog');
      // GET /v1/models answers 401 too, so the page may ask at once; otherwise the first send asks.
      await until(async () => responses.filter((r) => r.path === '/v1/models'), (rs) => rs.length > 0, 'GET /v1/models answered');
      let sends = 0;
      if (!(await askedForKey(page))) {
        await send(page, FRANCE_Q);
        sends++;
        await dialog.waitFor({ state: 'visible' });
      }
      assert.equal(await page.getAttribute('#key-input', 'type'), 'password');
      assert.deepEqual((await unnamedControls(page)).unnamed, [], 'the key dialog\'s controls have accessible names');

      const wrong = page.waitForResponse((r) => r.request().headers().authorization === 'Bearer wrong-key');
      await page.fill('#key-input', 'wrong-key');
      await page.click('#key-save');
      assert.equal((await wrong).status(), 401);
      const seen = await until(() => page.evaluate(() => { // one look at both, so that they are seen together
        const err = document.querySelector('#error');
        return { dialog: !!document.querySelector('#key-dialog')?.open, error: err?.checkVisibility() ? err.textContent.trim() : '' };
      }),
        (s) => s.dialog || /API key/i.test(s.error), 'a wrong key opens the dialog again or explains "API key"');
      if (!seen.dialog) {
        // Only an error: the user tries again and is asked again.
        if (!(await page.inputValue('#prompt'))) await page.fill('#prompt', FRANCE_Q);
        await page.click('#send');
        sends++;
        await dialog.waitFor({ state: 'visible' });
      }
      if (sends === 0) {
        // Asked at load: the key fixes the model list; then send.
        await page.fill('#key-input', 'secret123');
        await page.click('#key-save');
        await dialog.waitFor({ state: 'hidden' });
        await modelsLoaded(page);
        await send(page, FRANCE_Q);
      } else {
        await page.fill('#key-input', 'secret123');
        await page.click('#key-save');
        await dialog.waitFor({ state: 'hidden' });
      }
      const m = await waitAnswer(page, 0, 'stop');
      assert.match(m.text, /\S/, 'the answer appears with the right key');
      const users = (await readMessages(page)).filter((x) => x.role === 'user').length;
      if (seen.dialog && sends <= 1) assert.equal(users, 1, 'the retried send did not duplicate the user message');
      else assert.ok(users >= 1 && users <= sends, `${users} user messages after ${sends} sends`);
      assert.equal(await page.evaluate(() => localStorage.getItem('lokal.apiKey')), 'secret123');
      assert.equal((await chats.at(-1).request.allHeaders()).authorization, 'Bearer secret123');
      await modelsLoaded(page);

      await page.reload();
      await modelsLoaded(page); // GET /v1/models succeeded with the stored key
      await page.click('#new-chat');
      const n = chats.length;
      await waitAnswer(page, await send(page, STORY_Q), 'stop');
      assert.equal(chats.length, n + 1, 'one request, no retry');
      assert.equal((await chats.at(-1).request.allHeaders()).authorization, 'Bearer secret123');
      assert.equal(await dialog.isVisible(), false, 'no key dialog after a reload');
    });
  });

  test('a send refused with 401 asks for the key and is retried with it, once', T, async (t) => {
    await withPage(t, server.baseURL, { waitModels: false }, async ({ page, chats, responses }) => {
      const dialog = page.locator('#key-dialog');
      await until(async () => responses.filter((r) => r.path === '/v1/models'), (rs) => rs.length > 0, 'GET /v1/models answered');
      if (await askedForKey(page)) {
        // Asked at load for the model list: dismiss it (Escape, the dialog's cancel) to reach the send's own 401.
        await page.keyboard.press('Escape');
        await dialog.waitFor({ state: 'hidden' });
      }
      const idx = await send(page, FRANCE_Q);
      await dialog.waitFor({ state: 'visible' });
      assert.equal(chats.length, 1, 'one refused send');
      assert.equal(responses.filter((r) => r.path === '/v1/chat/completions').at(-1)?.status, 401);
      await page.fill('#key-input', 'secret123');
      await page.click('#key-save');
      const m = await waitAnswer(page, idx, 'stop');
      assert.match(m.text, /\S/, 'the retried send answers');
      assert.equal(chats.length, 2, 'the send is retried once, with the key');
      assert.deepEqual(chats[1].body.messages, chats[0].body.messages, 'the retry sends the same messages');
      assert.equal((await chats[1].request.allHeaders()).authorization, 'Bearer secret123');
      assert.equal((await readMessages(page)).filter((x) => x.role === 'user').length, 1, 'the user message is not duplicated');
      await modelsLoaded(page); // the model list loads with the key too
      assert.equal(await dialog.isVisible(), false);
    });
  });
});

// ---- errors -------------------------------------------------------------------------------------------------------

describe('web page: errors are explained', () => {
  let limits;
  let rate;
  let single; // one slot, no queue: a second request while one runs gets 503
  before(async () => {
    limits = await startServer(['-c', '64', '--max-body', '1024']);
    rate = await startServer(['--rate-limit-rpm', '1']);
    single = await startServer(['-np', '1', '--queue-size', '0', '-c', '8192', '--allow-long-ctx']);
  }, T);
  after(async () => {
    await stopServer(limits);
    await stopServer(rate);
    await stopServer(single);
  });

  const errorText = (page) => until(() => shownError(page), (s) => s.length > 0, '#error shows a message');

  test('413 "too large" and a prompt longer than the context', T, async (t) => {
    await withPage(t, limits.baseURL, {}, async ({ page }) => {
      assert.equal(await page.locator('#error').isVisible(), false, '#error is hidden while empty');
      assert.equal(await page.getAttribute('#error', 'role'), 'alert');
      await send(page, 'word '.repeat(300).trim()); // 1.5 kB: over --max-body 1024
      assert.match(await errorText(page), /too large/i);

      await page.click('#new-chat');
      await send(page, Array.from({ length: 90 }, (_, i) => `w${i % 10}`).join(' ')); // ~200 tokens, < 1 kB
      await until(() => shownError(page), (s) => /context/i.test(s), '#error mentions "context"');
    });
  });

  test('503 "busy" while the only slot is taken', T, async (t) => {
    await withPage(t, single.baseURL, {}, async ({ page, responses }) => {
      // A long stream whose reader never reads: the server blocks writing it, so the slot stays taken.
      const body = JSON.stringify({ stream: true, max_tokens: 8000, ignore_eos: true, messages: [{ role: 'user', content: STORY_Q }] });
      const req = http.request(single.url('/v1/chat/completions'), { method: 'POST', headers: { 'Content-Type': 'application/json' } });
      req.on('error', () => {});
      req.on('response', (res) => res.pause());
      req.end(body);
      try {
        await until(async () => (await fetch(single.url('/health')).then((r) => r.json())).slots.in_flight, (n) => n === 1, 'the slot is taken');
        await send(page, FRANCE_Q);
        assert.match(await errorText(page), /busy|loading/i);
        assert.equal(responses.filter((r) => r.path === '/v1/chat/completions').at(-1)?.status, 503);
      } finally {
        req.destroy();
      }
      await waitIdle(single, 30000);
    });
  });

  test('429 "rate limit"', T, async (t) => {
    await withPage(t, rate.baseURL, {}, async ({ page }) => {
      await waitAnswer(page, await send(page, FRANCE_Q), 'stop');
      await send(page, STORY_Q);
      assert.match(await errorText(page), /rate limit/i);
    });
  });
});
