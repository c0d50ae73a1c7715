// The live page: the last hour from the history API, then the feed live over server-sent events.
// Served as written: no framework, no build step, nothing from another origin.
'use strict';

(() => {
  const CURRENCIES = ['USD', 'EUR'];
  const WINDOW_MS = 60 * 60 * 1000;
  // The warning shows when a currency has had no new tick for this many intervals: one late tick
  // is not an outage, three missed slots are.
  const STALE_AFTER_INTERVALS = 3;
  const HISTORY_LIMIT = 10000;
  const RETRY_MAX_MS = 30000;
  const SVG = 'http://www.w3.org/2000/svg';
  const REASONS = {
    sources_unavailable: ['no source', 'no price source answered'],
    publisher_down: ['feed down', 'no publisher was running'],
    store_unavailable: ['not stored', 'the price could not be stored'],
    price_unconfirmed: ['unconfirmed', 'a price jump no second source confirmed'],
  };

  const feed = {
    // Per currency, in timedate order and one per timedate: {timedate, price, t}.
    series: { USD: [], EUR: [] },
    // Per currency, by `from`: a growing gap is announced again with a later `until`.
    gaps: { USD: new Map(), EUR: new Map() },
    intervalMs: null,
    demo: false,
    status: null,
    // Server clock minus this browser's, from the history answers' Date header.
    skewMs: 0,
    // performance.now() when each currency's newest tick arrived (or the page started).
    arrived: { USD: performance.now(), EUR: performance.now() },
    staleKey: '',
    retryMs: 1000,
  };

  const $ = (selector, root = document) => root.querySelector(selector);
  const sections = Object.fromEntries(
    CURRENCIES.map((c) => [c, $(`section[data-currency="${c}"]`)]),
  );

  // --- the model ----------------------------------------------------------------------------

  // The index of the first tick at or after time t.
  function lowerBound(list, t) {
    let lo = 0;
    let hi = list.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (list[mid].t < t) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  // Adds a tick unless one of its (currency, timedate) is held: a reconnect or the seam between
  // history and the stream repeats ticks, and each is drawn once. True if it was new.
  function addTick(currency, tick) {
    const list = feed.series[currency];
    const t = Date.parse(tick.timedate);
    if (!list || !Number.isFinite(t) || typeof tick.price !== 'number') return false;
    let i = list.length;
    if (i > 0 && list[i - 1].t >= t) {
      i = lowerBound(list, t);
      if (list[i].t === t) return false;
    }
    list.splice(i, 0, { timedate: tick.timedate, price: tick.price, t });
    if (i === list.length - 1) feed.arrived[currency] = performance.now();
    return true;
  }

  function addGap(gap) {
    const gaps = feed.gaps[gap.currency];
    const tFrom = Date.parse(gap.from);
    const tUntil = Date.parse(gap.until);
    if (!gaps || !Number.isFinite(tFrom) || !Number.isFinite(tUntil)) return;
    const held = gaps.get(gap.from);
    if (held && held.tUntil >= tUntil) return;
    gaps.set(gap.from, { ...gap, tFrom, tUntil });
  }

  function serverNow() {
    return Date.now() + feed.skewMs;
  }

  // The end of the drawn hour: now on the server's clock, or the newest tick if that is later.
  function windowEnd() {
    let end = serverNow();
    for (const c of CURRENCIES) {
      const last = feed.series[c].at(-1);
      if (last && last.t > end) end = last.t;
    }
    return end;
  }

  // Forgets what has left the hour.
  function trim() {
    const start = windowEnd() - WINDOW_MS;
    for (const c of CURRENCIES) {
      const drop = lowerBound(feed.series[c], start);
      if (drop > 0) feed.series[c].splice(0, drop);
      for (const [from, gap] of feed.gaps[c]) if (gap.tUntil <= start) feed.gaps[c].delete(from);
    }
  }

  // `5s`, `500ms`, `1m`, `1h`: how the feed writes its interval.
  function parseInterval(text) {
    const m = /^(\d+)(ms|s|m|h)$/.exec(text || '');
    if (!m) return null;
    return Number(m[1]) * { ms: 1, s: 1000, m: 60000, h: 3600000 }[m[2]];
  }

  // Where the stream must start so that nothing after the ticks held is missed: the older of the
  // currencies' newest ticks (since is inclusive: that tick comes again and is skipped).
  function resumeSince() {
    const newest = CURRENCIES.map((c) => feed.series[c].at(-1));
    if (newest.some((tick) => !tick)) {
      return String(Math.floor((serverNow() - WINDOW_MS) / 1000));
    }
    return newest.reduce((a, b) => (a.t <= b.t ? a : b)).timedate;
  }

  // --- history and the stream ---------------------------------------------------------------

  async function loadHistory() {
    setConnection('loading', 'history');
    // A browser clock far off the server's asks for the wrong hour: ask again on the server's.
    for (let attempt = 0; attempt < 2; attempt += 1) {
      const since = Math.floor((serverNow() - WINDOW_MS) / 1000);
      let query = `since=${since}&currency=USD,EUR&limit=${HISTORY_LIMIT}`;
      for (;;) {
        const response = await fetch(`v1/ticks?${query}`);
        if (!response.ok) throw new Error(`history answered ${response.status}`);
        const date = Date.parse(response.headers.get('date') || '');
        const skewMs = Number.isFinite(date) ? date - Date.now() : 0;
        const firstAnswer = !query.startsWith('cursor=');
        if (firstAnswer && attempt === 0 && Math.abs(skewMs - feed.skewMs) > 60000) {
          feed.skewMs = skewMs;
          break;
        }
        const page = await response.json();
        feed.intervalMs = parseInterval(page.interval) || feed.intervalMs;
        feed.demo = feed.demo || page.demo;
        for (const c of CURRENCIES) for (const tick of page.ticks[c] || []) addTick(c, tick);
        for (const gap of page.gaps) addGap(gap);
        if (!page.next_cursor) return;
        query = `cursor=${encodeURIComponent(page.next_cursor)}&limit=${HISTORY_LIMIT}`;
      }
    }
  }

  function parse(data) {
    try {
      return JSON.parse(data);
    } catch {
      return null;
    }
  }

  function openStream() {
    const since = encodeURIComponent(resumeSince());
    const source = new EventSource(`v1/stream?currency=USD,EUR&since=${since}`);
    setConnection('connecting', 'stream');
    source.addEventListener('open', () => setConnection('catching_up'));
    for (const c of CURRENCIES) {
      source.addEventListener(`btc/${c}`, (event) => {
        const tick = parse(event.data);
        if (tick && addTick(c, tick)) changed();
      });
    }
    source.addEventListener('gap', (event) => {
      const gap = parse(event.data);
      if (gap) {
        addGap(gap);
        changed();
      }
    });
    source.addEventListener('status', (event) => {
      const status = parse(event.data);
      if (status) {
        feed.status = status;
        feed.intervalMs = parseInterval(status.interval) || feed.intervalMs;
        feed.demo = feed.demo || status.demo === true;
        changed();
      }
    });
    source.addEventListener('live', () => {
      feed.retryMs = 1000;
      setConnection('live');
    });
    source.addEventListener('end', (event) => {
      const end = parse(event.data) || {};
      setConnection('reconnecting', `the server ended the stream: ${end.reason || 'no reason'}`);
    });
    source.addEventListener('error', () => {
      if (source.readyState !== EventSource.CLOSED) {
        // The browser reconnects by itself, with Last-Event-ID: the server resumes after it.
        if (feed.connection !== 'reconnecting') setConnection('reconnecting', 'connection lost');
        return;
      }
      // An answer the browser does not retry (503 at the server's stream cap, a proxy's error
      // page): start again later from the ticks held.
      source.close();
      retryLater(openStream, 'the stream was refused');
    });
  }

  function retryLater(what, why) {
    const seconds = Math.round(feed.retryMs / 1000);
    setConnection('retrying', `${why}; trying again in ${seconds} s`);
    setTimeout(what, feed.retryMs);
    feed.retryMs = Math.min(feed.retryMs * 2, RETRY_MAX_MS);
  }

  async function start() {
    try {
      await loadHistory();
    } catch (error) {
      retryLater(start, `history unavailable (${error.message})`);
      return;
    }
    changed();
    openStream();
  }

  // --- what the page shows ------------------------------------------------------------------

  const CONNECTION_TEXT = {
    connecting: 'connecting',
    loading: 'loading the last hour',
    catching_up: 'catching up',
    live: 'live',
    reconnecting: 'reconnecting',
    retrying: 'disconnected',
  };

  function setConnection(state, detail = '') {
    feed.connection = state;
    const el = $('#connection');
    el.dataset.state = state;
    el.textContent = CONNECTION_TEXT[state] + (detail ? `: ${detail}` : '');
  }

  function timeFormat(withSeconds, withMilliseconds = false) {
    const options = { hour: '2-digit', minute: '2-digit', hourCycle: 'h23' };
    if (withSeconds) options.second = '2-digit';
    if (withMilliseconds) options.fractionalSecondDigits = 3;
    return new Intl.DateTimeFormat(undefined, options);
  }

  // A tick's or a gap's time: with milliseconds when the slots are not whole seconds.
  function formatTime(t) {
    const subSecond = feed.intervalMs !== null && feed.intervalMs % 1000 !== 0;
    return timeFormat(true, subSecond).format(new Date(t));
  }

  function formatDuration(ms) {
    if (ms < 1000) return `${Math.round(ms)} ms`;
    const s = ms / 1000;
    if (s < 120) return `${Number.isInteger(s) ? s : s.toFixed(1)} s`;
    if (s < 7200) return `${Math.round(s / 60)} min`;
    return `${(s / 3600).toFixed(1)} h`;
  }

  const priceFormats = {};
  function formatPrice(currency, price, digits = 2) {
    const key = `${currency}/${digits}`;
    priceFormats[key] ||= new Intl.NumberFormat(undefined, {
      style: 'currency',
      currency,
      minimumFractionDigits: digits,
      maximumFractionDigits: digits,
    });
    return priceFormats[key].format(price);
  }

  function renderStatus() {
    const el = $('#feed-status');
    const status = feed.status;
    if (!status) return;
    el.dataset.state = status.state;
    const since = Object.entries(status.missing_since || {});
    let text = status.state;
    if (status.state === 'degraded' || status.state === 'down') {
      const parts = since.map(([c, t]) => `no ${c} price since ${formatTime(Date.parse(t))}`);
      if (parts.length) text += `: ${parts.join(', ')}`;
    } else if (status.state === 'offline') {
      text += ': the publisher is not running';
    }
    if (status.node !== undefined) text += ` (node ${status.node})`;
    el.textContent = text;
    $('#demo').hidden = !feed.demo;
  }

  function renderStale() {
    const el = $('#stale');
    const stale = feed.intervalMs
      ? CURRENCIES.filter(
          (c) => performance.now() - feed.arrived[c] > STALE_AFTER_INTERVALS * feed.intervalMs,
        )
      : [];
    // The text changes only when the stale set or its newest ticks do, so that a screen reader
    // announces the alert once rather than every second.
    const newest = stale.map((c) => feed.series[c].at(-1));
    const key = stale.join() + newest.map((tick) => tick && tick.timedate).join();
    if (key === feed.staleKey) return;
    feed.staleKey = key;
    el.hidden = stale.length === 0;
    el.dataset.currencies = stale.join(',');
    if (!stale.length) return;
    const lasts = newest.map((tick, i) =>
      tick ? `${stale[i]} since ${formatTime(tick.t)}` : `${stale[i]} in the last hour`,
    );
    el.textContent =
      `No new price: ${lasts.join(', ')} (one is due every ` +
      `${formatDuration(feed.intervalMs)}). The prices shown may be out of date.`;
  }

  function svg(name, attributes = {}, text) {
    const el = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes)) el.setAttribute(key, value);
    if (text !== undefined) el.textContent = text;
    return el;
  }

  // About `count` round steps between lo and hi.
  function priceTicks(lo, hi, count) {
    const raw = (hi - lo) / count;
    const magnitude = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= raw);
    const ticks = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi; v += step) ticks.push(v);
    return { ticks, step };
  }

  const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600].map((s) => s * 1000);

  function timeTicks(x0, x1, width) {
    const step = TIME_STEPS.find((s) => (x1 - x0) / s <= width / 90) || TIME_STEPS.at(-1);
    const ticks = [];
    for (let t = Math.ceil(x0 / step) * step; t <= x1; t += step) ticks.push(t);
    return { ticks, step };
  }

  // The runs of consecutive slots: a line is broken wherever a slot has no tick.
  function runs(list) {
    const out = [];
    let run = [];
    for (const tick of list) {
      const prev = run.at(-1);
      if (prev && feed.intervalMs && tick.t - prev.t > 1.5 * feed.intervalMs) {
        out.push(run);
        run = [];
      }
      run.push(tick);
    }
    if (run.length) out.push(run);
    return out;
  }

  function renderChart(currency, x0, x1) {
    const section = sections[currency];
    const chart = $('svg.chart', section);
    const list = feed.series[currency];
    const gaps = [...feed.gaps[currency].values()].sort((a, b) => a.tFrom - b.tFrom);
    const width = Math.max(chart.clientWidth, 280);
    const height = Math.max(chart.clientHeight, 160);
    const m = { left: 84, right: 14, top: 10, bottom: 24 };
    chart.setAttribute('viewBox', `0 0 ${width} ${height}`);

    let lo = Infinity;
    let hi = -Infinity;
    for (const tick of list) {
      if (tick.price < lo) lo = tick.price;
      if (tick.price > hi) hi = tick.price;
    }
    if (!list.length) [lo, hi] = [0, 1];
    const pad = hi > lo ? (hi - lo) * 0.1 : Math.max(Math.abs(lo) * 0.0005, 0.01);
    lo -= pad;
    hi += pad;
    const X = (t) => m.left + ((t - x0) / (x1 - x0)) * (width - m.left - m.right);
    const Y = (p) => m.top + ((hi - p) / (hi - lo)) * (height - m.top - m.bottom);
    const bottom = height - m.bottom;

    const grid = svg('g', { class: 'grid' });
    const prices = priceTicks(lo, hi, Math.max(2, Math.floor((height - 40) / 40)));
    // As many decimals as the step needs (2.5 needs one), at most the currency's two.
    const whole = (d) => Math.abs(prices.step * 10 ** d - Math.round(prices.step * 10 ** d)) < 1e-6;
    const digits = [0, 1].find(whole) ?? 2;
    for (const p of prices.ticks) {
      const y = Y(p).toFixed(1);
      grid.append(svg('line', { x1: m.left, x2: width - m.right, y1: y, y2: y }));
      grid.append(
        svg('text', { x: m.left - 6, y, 'text-anchor': 'end', 'dominant-baseline': 'middle' },
          formatPrice(currency, p, digits)),
      );
    }
    const times = timeTicks(x0, x1, width - m.left - m.right);
    const timeLabel = timeFormat(times.step < 60000);
    for (const t of times.ticks) {
      const x = X(t).toFixed(1);
      grid.append(svg('line', { x1: x, x2: x, y1: m.top, y2: bottom, class: 'vertical' }));
      grid.append(
        svg('text', { x, y: height - 6, 'text-anchor': 'middle' }, timeLabel.format(new Date(t))),
      );
    }

    const shaded = svg('g', { class: 'gaps' });
    for (const gap of gaps) {
      if (gap.tUntil <= x0 || gap.tFrom >= x1) continue;
      const left = X(Math.max(gap.tFrom, x0));
      const w = Math.max(X(Math.min(gap.tUntil, x1)) - left, 2);
      const [label, reason] = REASONS[gap.reason] || [gap.reason, gap.reason];
      const g = svg('g', {
        class: 'gap',
        'data-from': gap.from,
        'data-until': gap.until,
        'data-reason': gap.reason,
      });
      g.append(
        svg('title', {}, `${currency}: no tick from ${formatTime(gap.tFrom)} to ` +
          `${formatTime(gap.tUntil)} (${formatDuration(gap.tUntil - gap.tFrom)}): ${reason}`),
      );
      const box = { x: left.toFixed(1), y: m.top, width: w.toFixed(1), height: bottom - m.top };
      g.append(svg('rect', box));
      if (w >= label.length * 6.5 + 8) {
        const at = { x: (left + w / 2).toFixed(1), y: m.top + 14, 'text-anchor': 'middle' };
        g.append(svg('text', at, label));
      }
      shaded.append(g);
    }

    const lines = svg('g', { class: 'lines' });
    for (const run of runs(list)) {
      let d = '';
      for (const [i, tick] of run.entries()) {
        d += `${i ? 'L' : 'M'}${X(tick.t).toFixed(1)} ${Y(tick.price).toFixed(1)}`;
      }
      // A run of one tick is a dot.
      if (run.length === 1) d += 'h0.01';
      lines.append(
        svg('path', {
          class: 'line',
          d,
          'data-first': run[0].timedate,
          'data-last': run.at(-1).timedate,
          'data-count': run.length,
        }),
      );
    }
    const last = list.at(-1);
    if (last) {
      const dot = { class: 'last', cx: X(last.t).toFixed(1), cy: Y(last.price).toFixed(1), r: 3.5 };
      lines.append(svg('circle', dot));
    }
    chart.replaceChildren(grid, shaded, lines);

    // What the chart shows, in words, for a screen reader.
    const caption = $('figcaption', section);
    if (last) {
      const low = formatPrice(currency, Math.min(...list.map((tick) => tick.price)));
      const high = formatPrice(currency, Math.max(...list.map((tick) => tick.price)));
      caption.textContent =
        `BTC in ${currency} from ${formatTime(list[0].t)} to ${formatTime(last.t)}: ` +
        `${list.length} ticks, low ${low}, high ${high}; ` +
        `${gaps.length} ${gaps.length === 1 ? 'gap' : 'gaps'}.`;
    } else {
      caption.textContent = `BTC in ${currency}: no tick in the last hour.`;
    }
    $('.value', section).textContent = last ? formatPrice(currency, last.price) : '–';
    $('.as-of', section).textContent = last ? `at ${formatTime(last.t)}` : '';
  }

  // Newest first; the same span and reason in both currencies is one line.
  function renderGapList() {
    const lines = new Map();
    for (const c of CURRENCIES) {
      for (const gap of feed.gaps[c].values()) {
        const key = `${gap.from}/${gap.until}/${gap.reason}`;
        if (lines.has(key)) lines.get(key).currencies.push(c);
        else lines.set(key, { ...gap, currencies: [c] });
      }
    }
    const items = [...lines.values()].sort((a, b) => b.tFrom - a.tFrom).map((gap) => {
      const li = document.createElement('li');
      li.dataset.reason = gap.reason;
      const reason = (REASONS[gap.reason] || [gap.reason, gap.reason])[1];
      li.textContent =
        `${gap.currencies.join(' and ')} ${formatTime(gap.tFrom)} – ${formatTime(gap.tUntil)} ` +
        `(${formatDuration(gap.tUntil - gap.tFrom)}): ${reason}`;
      return li;
    });
    $('#gap-list').replaceChildren(...items);
    $('#gaps .none').hidden = items.length > 0;
  }

  // What the last render drew: the hooks below report this, so that what they say and what the
  // page shows always agree, even while new ticks wait for the next frame.
  const drawn = { series: { USD: [], EUR: [] }, gaps: [] };

  function render() {
    trim();
    for (const c of CURRENCIES) drawn.series[c] = feed.series[c].slice();
    drawn.gaps = CURRENCIES.flatMap((c) => [...feed.gaps[c].values()]);
    const x1 = windowEnd();
    let first = x1 - 5 * 60 * 1000;
    for (const c of CURRENCIES) {
      if (feed.series[c].length) first = Math.min(first, feed.series[c][0].t);
      for (const gap of feed.gaps[c].values()) first = Math.min(first, gap.tFrom);
    }
    const x0 = Math.max(first, x1 - WINDOW_MS);
    for (const c of CURRENCIES) renderChart(c, x0, x1);
    renderGapList();
    renderStatus();
    renderStale();
  }

  let renderPending = false;
  function changed() {
    if (renderPending) return;
    renderPending = true;
    requestAnimationFrame(() => {
      renderPending = false;
      render();
    });
  }

  // What is drawn, for tests and the curious: each currency's ticks, and the gaps.
  Object.defineProperty(window, 'pricefeedSeries', {
    get: () =>
      Object.fromEntries(
        CURRENCIES.map((c) => [
          c,
          drawn.series[c].map(({ timedate, price }) => ({ timedate, price })),
        ]),
      ),
  });
  Object.defineProperty(window, 'pricefeedGaps', {
    get: () =>
      drawn.gaps.map(({ currency, from, until, reason }) => ({ currency, from, until, reason })),
  });

  // The time axis moves on, and the warning comes, without any event.
  setInterval(changed, 1000);
  window.addEventListener('resize', changed);
  start();
})();
