// Cold page loads of chat pages in headless Chromium: bytes on the wire, requests, DOMContentLoaded and load event.
// Usage (servers already running, e.g. lokal serve --port 8080 and llama-server --port 8090):
//   node bench/webui_load.mjs lokal=http://127.0.0.1:8080/ llama-server=http://127.0.0.1:8090/ [--runs 5]
// Needs scripts/setup.sh (Debian chromium, e2e/node_modules/playwright-core). Prints the median run per page.
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const { chromium } = createRequire(path.join(here, '..', 'e2e', 'package.json'))('playwright-core');
const args = process.argv.slice(2);
const ri = args.indexOf('--runs');
const runs = ri >= 0 ? Number(args.splice(ri, 2)[1]) : 5;
if (!args.length) {
  console.error('usage: node bench/webui_load.mjs NAME=URL... [--runs N]');
  process.exit(2);
}
const browser = await chromium.launch({ executablePath: process.env.LOKAL_CHROMIUM || '/usr/bin/chromium', headless: true, args: ['--no-sandbox'] });
try {
  for (const a of args) {
    const [name, url] = a.includes('=') ? a.split(/=(.*)/s) : [a, a];
    const rows = [];
    for (let i = 0; i < runs; i++) {
      const ctx = await browser.newContext(); // empty cache: a first visit
      const page = await ctx.newPage();
      const sizes = []; // body bytes as transferred (compressed), per response
      page.on('requestfinished', (r) => sizes.push(r.sizes().then((s) => s.responseBodySize)));
      await page.goto(url, { waitUntil: 'load' });
      const t = await page.evaluate(() => {
        const n = performance.getEntriesByType('navigation')[0];
        return { dcl: n.domContentLoadedEventEnd, load: n.loadEventEnd };
      });
      const bytes = (await Promise.all(sizes)).reduce((a, b) => a + b, 0);
      rows.push({ dcl_ms: Math.round(t.dcl), load_ms: Math.round(t.load), bytes, requests: sizes.length });
      await ctx.close();
    }
    rows.sort((x, y) => x.load_ms - y.load_ms);
    console.log(JSON.stringify({ page: name, url, runs, median: rows[Math.floor(runs / 2)], load_ms: rows.map((r) => r.load_ms) }));
  }
} finally {
  await browser.close();
}
