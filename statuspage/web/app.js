// xlb's status page: polls /lb/status/data (state and new samples), follows
// /lb/status/events (server-sent events) and draws everything with the DOM
// and hand-made SVG. No library, nothing from another origin.
'use strict';

const MAX_SAMPLES = 300; // as the server keeps: 10 minutes at 2 s
const MAX_EVENTS = 200;
const SVGNS = 'http://www.w3.org/2000/svg';

let samples = [];
let lastSeq = 0;
let intervalMs = 2000;
let data = null;
let fetching = false;
let again = false;
let timer = null;
let lastEvent = 0;

function $(id) { return document.getElementById(id); }

// h builds an element: attributes (class, data-*, ...) and children (nodes
// or text, never parsed as HTML).
function h(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const k of kids) {
    if (k !== undefined && k !== null) e.append(k);
  }
  return e;
}

function fmt(n, unit) {
  if (n === undefined || n === null || !isFinite(n)) return '-';
  const u = unit || '';
  const a = Math.abs(n);
  if (a >= 1e9) return (n / 1e9).toFixed(1) + 'G' + u;
  if (a >= 1e6) return (n / 1e6).toFixed(1) + 'M' + u;
  if (a >= 1e4) return (n / 1e3).toFixed(1) + 'k' + u;
  if (a >= 100 || n === 0 || Number.isInteger(n)) return Math.round(n) + u;
  if (a >= 1) return n.toFixed(1) + u;
  return n.toPrecision(2) + u;
}

function fmtBytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + ' ' + units[i];
}

// polyline of values in a w x hgt box, scaled to max, right-aligned on
// MAX_SAMPLES slots so that charts side by side share their time axis.
function polyline(values, max, w, hgt, cls) {
  const step = w / (MAX_SAMPLES - 1);
  const off = MAX_SAMPLES - values.length;
  const pts = values.map((v, i) =>
    ((off + i) * step).toFixed(1) + ',' + (hgt - 1 - (hgt - 2) * (v || 0) / max).toFixed(1));
  if (pts.length === 1) pts.unshift(pts[0].replace(/^[^,]*/, String(w - 6))); // one sample: a short dash
  const p = document.createElementNS(SVGNS, 'polyline');
  p.setAttribute('points', pts.join(' '));
  p.setAttribute('class', cls);
  p.setAttribute('vector-effect', 'non-scaling-stroke');
  return p;
}

function svg(w, hgt) {
  const s = document.createElementNS(SVGNS, 'svg');
  s.setAttribute('viewBox', `0 0 ${w} ${hgt}`);
  s.setAttribute('preserveAspectRatio', 'none');
  return s;
}

// chart draws lines ([{name, values}]) with a legend of their last values
// and the scale's maximum.
function chart(title, lines, unit) {
  const w = 300, hgt = 56;
  let max = 0;
  for (const l of lines) for (const v of l.values) max = Math.max(max, v || 0);
  const s = svg(w, hgt);
  lines.forEach((l, i) => s.append(polyline(l.values, max || 1, w, hgt, 'l' + (i % 5))));
  const legend = h('span', {});
  lines.forEach((l, i) => {
    const last = l.values.length ? l.values[l.values.length - 1] : 0;
    legend.append(h('span', { class: 'k' + (i % 5) }, ` ${l.name} ${fmt(last, unit)}`));
  });
  return h('div', { class: 'chart' },
    h('div', { class: 'label' }, h('span', {}, title), h('span', {}, 'max ' + fmt(max, unit))),
    s, h('div', { class: 'label' }, legend));
}

function sparkline(values) {
  const w = 90, hgt = 18;
  let max = 0;
  for (const v of values) max = Math.max(max, v || 0);
  const s = svg(w, hgt);
  s.append(polyline(values, max || 1, w, hgt, 'l0'));
  return h('div', { class: 'spark' }, s);
}

function seriesOf(get) { return samples.map(get); }
function lastSample() { return samples.length ? samples[samples.length - 1] : null; }

function datapathService(name) {
  const dp = data.datapath;
  return dp && dp.services ? dp.services.find((s) => s.name === name) : undefined;
}

function cell(v, cls) { return h('td', cls ? { class: cls } : {}, String(v)); }
function stateCell(v, cls) { return h('td', { class: cls, 'data-v': v }, v); }

function renderService(svc) {
  const dps = datapathService(svc.name);
  const l7 = svc.mode === 'l7';
  const card = h('div', { class: 'card', 'data-service': svc.name });
  card.append(h('h3', {}, svc.name));
  let meta = `${svc.vip.includes(':') ? '[' + svc.vip + ']' : svc.vip}:${svc.port}/${svc.protocol} · ${svc.mode} · ${svc.policy}`;
  if (dps) {
    meta += ` · packets ${fmt(dps.packets)} · ${fmtBytes(dps.bytes)} · new flows ${fmt(dps.new_flows)}`;
    if (dps.nat_ports_in_use) meta += ` · nat ports in use ${dps.nat_ports_in_use}`;
  }
  card.append(h('div', { class: 'meta' }, meta));

  const rates = (k) => seriesOf((s) => (s.services[svc.name] || {})[k] || 0);
  const charts = h('div', { class: 'charts' });
  if (l7) {
    charts.append(chart('requests / s', [{ name: 'all', values: rates('rps') }, { name: '5xx', values: rates('eps') }], ''));
    charts.append(chart('latency', [{ name: 'p50', values: rates('p50_ms') }, { name: 'p99', values: rates('p99_ms') }], ' ms'));
  }
  if (!l7 || rates('pps').some((v) => v > 0)) {
    charts.append(chart('packets / s through XDP', [{ name: 'packets', values: rates('pps') }], ''));
  }
  card.append(charts);

  const backends = data.backends.filter((b) => b.service === svc.name);
  const t = h('table', {});
  t.append(h('tr', {},
    ...['backend', 'state', 'health', 'admin', 'weight', 'share', 'open', 'new flows', l7 ? 'requests' : 'packets', l7 ? 'req/s' : 'pkt/s', '', 'checked at']
      .map((c, i) => h('th', i >= 4 && i <= 9 ? { class: 'num' } : {}, c))));
  const last = lastSample();
  for (const b of backends) {
    let share = '-';
    const dpb = !l7 && dps && dps.backends ? dps.backends.find((x) => x.address === b.address) : undefined;
    if (dpb) share = (100 * dpb.share).toFixed(1) + '%';
    const rate = last && last.backends ? last.backends[b.id] : undefined;
    const addr = l7 ? (b.address.includes(':') ? `[${b.address}]:${b.port}` : `${b.address}:${b.port}`) : b.address;
    let title = b.check ? 'check: ' + b.check : 'unchecked';
    if (dpb) title += ` · mac ${dpb.mac} · ${fmtBytes(dpb.bytes)}` + (dpb.port ? ` · from ${dpb.source}` : '');
    t.append(h('tr', { 'data-backend': b.id },
      h('td', { title }, addr),
      stateCell(b.state, 'state'), stateCell(b.health, 'health'), stateCell(b.admin, 'admin'),
      cell(b.weight, 'num'), cell(share, 'num share'), cell(fmt(b.open_flows), 'num'), cell(l7 ? '-' : fmt(b.new_flows), 'num'),
      cell(fmt(b.packets), 'num'), cell(fmt(rate), 'num'),
      h('td', {}, sparkline(seriesOf((s) => (s.backends || {})[b.id] || 0))),
      cell(b.check_via || '-')));
  }
  if (!backends.length) t.append(h('tr', {}, h('td', { colspan: 12, class: 'dim' }, 'no backends')));
  card.append(t);
  return card;
}

function renderVerdicts() {
  const box = $('verdicts');
  box.replaceChildren();
  const dp = data.datapath;
  if (!dp) {
    box.append(h('p', { class: 'dim' }, data.datapath_error ? 'datapath: ' + data.datapath_error : 'The XDP datapath is off: the L7 tier runs alone.'));
    return;
  }
  const classes = ['tx', 'redirect', 'pass', 'drop'];
  const byVerdict = (v) => seriesOf((s) => {
    let n = 0;
    for (const [k, r] of Object.entries(s.verdicts || {})) if (k.startsWith(v + '/')) n += r;
    return n;
  });
  box.append(h('div', { class: 'charts' }, chart('packets / s by verdict', classes.map((v) => ({ name: v, values: byVerdict(v) })), '')));
  const t = h('table', {}, h('tr', {}, h('th', {}, 'verdict'), h('th', {}, 'reason'),
    h('th', { class: 'num' }, 'packets'), h('th', { class: 'num' }, 'bytes'), h('th', { class: 'num' }, 'pkt/s')));
  const last = lastSample();
  let zero = 0;
  for (const v of dp.verdicts || []) {
    if (!v.packets) { zero++; continue; }
    const rate = last && last.verdicts ? last.verdicts[v.verdict + '/' + v.reason] || 0 : undefined;
    t.append(h('tr', { 'data-verdict': v.verdict + '/' + v.reason },
      cell(v.verdict), cell(v.reason), cell(fmt(v.packets), 'num'), cell(fmtBytes(v.bytes), 'num'), cell(fmt(rate), 'num')));
  }
  box.append(t);
  if (zero) box.append(h('p', { class: 'dim' }, `${zero} more reasons at 0 packets.`));
}

function render() {
  const hr = data.health;
  const badge = $('health');
  badge.textContent = hr ? hr.status : 'unknown';
  badge.setAttribute('data-v', hr ? hr.status : 'unknown');
  $('summary').textContent = hr ? `${hr.healthy_backends} of ${hr.total_backends} backends healthy` +
    (data.version ? ` · ${data.version}` : '') : '';
  $('updated').textContent = 'updated ' + new Date(data.time).toLocaleTimeString();
  const box = $('services');
  box.replaceChildren(...data.services.map(renderService));
  if (!data.services.length) box.append(h('p', { class: 'dim' }, 'no services'));
  renderVerdicts();
}

function setLive(ok, text) {
  const e = $('live');
  e.className = 'live ' + (ok ? 'on' : 'off');
  e.textContent = text;
}

async function refresh() {
  if (fetching) { again = true; return; }
  fetching = true;
  try {
    const r = await fetch('/lb/status/data?since=' + lastSeq, { cache: 'no-store' });
    if (!r.ok) throw new Error('HTTP ' + r.status);
    const d = await r.json();
    for (const s of d.samples) {
      if (s.seq > lastSeq) { samples.push(s); lastSeq = s.seq; }
    }
    if (samples.length > MAX_SAMPLES) samples = samples.slice(samples.length - MAX_SAMPLES);
    data = d;
    if (d.interval_ms && d.interval_ms !== intervalMs) { intervalMs = d.interval_ms; schedule(); }
    render();
  } catch (e) {
    setLive(false, 'daemon unreachable');
  } finally {
    fetching = false;
    if (again) { again = false; refresh(); }
  }
}

function schedule() {
  if (timer) clearInterval(timer);
  timer = setInterval(refresh, intervalMs);
}

function addEvent(ev) {
  if (ev.seq <= lastEvent) return;
  lastEvent = ev.seq;
  const list = $('events');
  const when = new Date(ev.time);
  const li = h('li', { 'data-seq': ev.seq, 'data-kind': ev.kind, 'data-backend': ev.backend || '' },
    h('time', { datetime: ev.time }, when.toLocaleTimeString()),
    h('span', { class: 'kind ' + ev.kind }, ev.kind),
    ' ', ev.backend || ev.service || '', ev.backend || ev.service ? ': ' : '', ev.message);
  list.prepend(li);
  while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
}

function follow() {
  const es = new EventSource('/lb/status/events');
  es.onopen = () => setLive(true, 'live');
  es.onerror = () => setLive(false, 'reconnecting');
  es.addEventListener('xlb', (m) => {
    addEvent(JSON.parse(m.data));
    refresh(); // the state changed: show it now, not at the next poll
  });
}

refresh();
schedule();
follow();
