// Drives the system's Chromium, headless, for tests/tests/live_page.rs: one JSON command per line
// on stdin, one JSON answer per line on stdout. The test decides what to do and what to expect;
// this only opens the page, reads what it shows, runs a plain EventSource in it, and takes
// screenshots.
//
// Commands: {"cmd":"open","url":…,"colorScheme":"light"|"dark"}, {"cmd":"page"},
// {"cmd":"probe","url":…}, {"cmd":"probe_events"}, {"cmd":"screenshot","path":…},
// {"cmd":"close"}.
// Answers: {"ok":true,"value":…} or {"ok":false,"error":"…"}.

import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

// This machine's network may be closed: no background traffic, no QUIC, nothing but the page.
const FLAGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

// Playwright gives Chromium a fresh --user-data-dir of its own for every launch.
const browser = await chromium.launch({
  executablePath: process.env.PRICEFEED_CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: FLAGS,
});

let page = null;
// Script errors and console errors (a Content-Security-Policy violation is one) of the page.
const errors = [];

// What the page shows, read from its DOM, and the series it draws.
function readPage() {
  const text = (selector) => document.querySelector(selector).textContent;
  const stale = document.querySelector('#stale');
  const charts = {};
  for (const section of document.querySelectorAll('section.currency')) {
    charts[section.dataset.currency] = {
      price: section.querySelector('.price .value').textContent,
      runs: [...section.querySelectorAll('svg.chart path.line')].map((path) => ({
        first: path.dataset.first,
        last: path.dataset.last,
        count: Number(path.dataset.count),
      })),
      gaps: [...section.querySelectorAll('svg.chart g.gap')].map((g) => ({
        from: g.dataset.from,
        until: g.dataset.until,
        reason: g.dataset.reason,
        title: g.querySelector('title').textContent,
        width: Number(g.querySelector('rect').getAttribute('width')),
      })),
    };
  }
  const state = (selector) => document.querySelector(selector).dataset.state;
  return {
    series: window.pricefeedSeries,
    gaps: window.pricefeedGaps,
    connection: { state: state('#connection'), text: text('#connection') },
    feed: { state: state('#feed-status'), text: text('#feed-status') },
    stale: {
      shown: !stale.hidden,
      text: stale.textContent,
      currencies: stale.dataset.currencies || '',
    },
    demo: !document.querySelector('#demo').hidden,
    charts,
    gapList: [...document.querySelectorAll('#gap-list li')].map((li) => li.textContent),
  };
}

// A plain EventSource beside the page's own, keeping every event as received.
function startProbe(url) {
  const probe = { opens: 0, errors: 0, events: [] };
  window.pricefeedProbe = probe;
  const source = new EventSource(url);
  source.addEventListener('open', () => {
    probe.opens += 1;
  });
  source.addEventListener('error', () => {
    probe.errors += 1;
  });
  for (const type of ['btc/USD', 'btc/EUR', 'gap', 'status', 'live', 'end']) {
    source.addEventListener(type, (event) => {
      probe.events.push({ type, data: event.data, id: event.lastEventId });
    });
  }
}

const commands = {
  async open({ url, colorScheme = 'light', width = 1000, height = 900 }) {
    const context = await browser.newContext({ viewport: { width, height }, colorScheme });
    page = await context.newPage();
    page.on('pageerror', (error) => errors.push(`page error: ${error.message}`));
    page.on('console', (message) => {
      if (message.type() === 'error') errors.push(`console: ${message.text()}`);
    });
    const response = await page.goto(url);
    return { status: response.status(), headers: response.headers() };
  },
  async page() {
    return { ...(await page.evaluate(readPage)), errors };
  },
  async probe({ url }) {
    await page.evaluate(startProbe, url);
    return null;
  },
  async probe_events() {
    return page.evaluate(() => window.pricefeedProbe);
  },
  async screenshot({ path }) {
    await page.screenshot({ path, fullPage: true });
    return null;
  },
  async close() {
    await browser.close();
    return null;
  },
};

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  let answer;
  try {
    const request = JSON.parse(line);
    const command = commands[request.cmd];
    if (!command) throw new Error(`unknown command ${request.cmd}`);
    answer = { ok: true, value: await command(request) };
  } catch (error) {
    answer = { ok: false, error: String(error && error.stack ? error.stack : error) };
  }
  process.stdout.write(`${JSON.stringify(answer)}\n`);
  if (answer.ok && line.includes('"close"')) break;
}
await browser.close().catch(() => {});
// stdin, still open, would keep Node running.
process.exit(0);
