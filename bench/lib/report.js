// Turns a run's results into the summary rows, BENCHMARKS.md, the SVG chart and a console table.
// No dependencies: the SVG is written by hand.
'use strict';

const IMPL_NAMES = { rt: 'realtime-events (Rust engine)', reference: 'reference (bare tokio-tungstenite broadcaster, bench/reference)', baseline: 'baseline (plain Node: ws + jsonwebtoken)' };

const fmtInt = (n) => (n == null || Number.isNaN(n) ? '–' : Math.round(n).toLocaleString('en-US'));
const fmtNum = (n, d = 2) => (n == null || Number.isNaN(n) ? '–' : Number(n).toFixed(d));
const fmtMs = (us) => (us == null ? '–' : `${(us / 1000).toFixed(us < 10_000 ? 2 : 0)} ms`);
const fmtBytes = (b) => (b == null ? '–' : b >= 10 * 1024 ? `${(b / 1024).toFixed(1)} KiB` : `${fmtInt(b)} B`);
const fmtFactor = (f) => (f == null || !Number.isFinite(f) ? '–' : f >= 10 ? `${f.toFixed(0)}×` : `${f.toFixed(1)}×`);

function lossText(f) {
  if (!f) return '–';
  const parts = [`${fmtInt(f.lost)} lost`];
  if (f.duplicates) parts.push(`${fmtInt(f.duplicates)} dup`);
  if (f.reordered) parts.push(`${fmtInt(f.reordered)} reordered`);
  if (f.not_published) parts.push(`${fmtInt(f.not_published)} of ${fmtInt(f.scheduled)} due events never published (publisher's event loop too busy)`);
  if (f.backlog_at_cap) parts.push(`${fmtInt(f.backlog_at_cap)} still queued at the ${f.drain_cap_s} s drain cap`);
  if (f.disconnected) parts.push(`${fmtInt(f.disconnected)} clients cut`);
  return parts.join(', ');
}

/**
 * One row per headline figure: values for rt and baseline, the improvement factor (rt better
 * than baseline when > 1, whichever direction "better" is), the target and whether it is met.
 */
function summarize(results) {
  const rows = [];
  const add = (row) => {
    const { rt, baseline, better } = row;
    if (rt == null && baseline == null) return;
    if (rt != null && baseline != null && rt > 0 && baseline > 0) {
      row.factor = better === 'higher' ? rt / baseline : baseline / rt;
    } else row.factor = null;
    // The same ratio against the near-limit reference (≥ 1: rt at or beyond the reference).
    const ref = row.reference;
    row.refFactor = rt != null && ref != null && rt > 0 && ref > 0 ? (better === 'higher' ? rt / ref : ref / rt) : null;
    rows.push(row);
  };
  const r = results;
  const sw = r.sweep;
  if (sw && !sw.error) {
    add({
      key: 'sweep', label: `Sweep: highest awaited paced rate with 0 loss, p99 from schedule < 100 ms, ≥ 95 % published (${fmtInt(sw.rt?.clients ?? sw.baseline?.clients)} clients)`,
      unit: 'ev/s', better: 'higher', rt: sw.rt?.max_rate, reference: sw.reference?.max_rate, baseline: sw.baseline?.max_rate, fmt: fmtInt,
      target: '≥ reference', met: sw.rt && sw.reference ? sw.rt.max_rate >= sw.reference.max_rate : null,
      note: ['rt', 'reference', 'baseline', 'rt_redis'].filter((k) => sw[k]).map((k) => `${k} stopped at ${sw[k].stop_reason}`).join('; '),
    });
    if (sw.rt_redis) {
      add({
        key: 'sweep_redis', label: 'Sweep, Redis mode (publisher in another process)', unit: 'ev/s', better: 'higher',
        rt: sw.rt_redis.max_rate, reference: null, baseline: sw.baseline?.max_rate, fmt: fmtInt,
        target: '≥ 4× baseline, ≥ ½ memory mode', met: sw.baseline && sw.rt ? sw.rt_redis.max_rate >= 4 * sw.baseline.max_rate && sw.rt_redis.max_rate >= sw.rt.max_rate / 2 : null,
      });
    }
  }
  const pl = r.publishlatency;
  if (pl && !pl.error) {
    const rate = pl.rt?.rate ?? pl.baseline?.rate;
    for (const [q, name] of [['p50', 'p50'], ['p99', 'p99']]) {
      add({
        key: `publish_call_${q}`, label: `await publishParcelUpdate() ${name} at ${fmtInt(rate)} ev/s × ${fmtInt(pl.rt?.clients ?? pl.baseline?.clients)} clients`,
        unit: 'µs', better: 'lower', rt: pl.rt?.call_latency_us?.[q], reference: pl.reference?.call_latency_us?.[q], baseline: pl.baseline?.call_latency_us?.[q], fmt: fmtMs,
        target: q === 'p99' ? '≤ 1 ms' : '', met: q === 'p99' && pl.rt ? pl.rt.call_latency_us.p99 <= 1000 : null,
      });
    }
    if (pl.rt_redis) {
      add({
        key: 'publish_call_redis', label: 'await publishParcelUpdate() p50 / p99, Redis mode (the p99 is the figure)', unit: 'µs', better: 'lower',
        rt: pl.rt_redis.call_latency_us?.p99, reference: null, baseline: null, fmt: fmtMs,
        target: '≤ 2 ms + one Redis round trip',
        // The round trip: a bare PING from the publishing process to the same Redis, p99, in the same run.
        met: pl.rt_redis.redis_rtt_us ? pl.rt_redis.call_latency_us.p99 <= 2000 + pl.rt_redis.redis_rtt_us.p99 : null,
        note: `rt (redis) p50 ${fmtMs(pl.rt_redis.call_latency_us?.p50)}; bare Redis round trip p50 / p99 ${fmtMs(pl.rt_redis.redis_rtt_us?.p50)} / ${fmtMs(pl.rt_redis.redis_rtt_us?.p99)}`,
      });
    }
  }
  const fo = r.fanout;
  if (fo && !fo.error) {
    add({
      key: 'fanout', label: `Fan-out: deliveries/s (${fmtInt(fo.rt?.clients ?? fo.baseline?.clients)} clients, publish as fast as the API accepts)`,
      unit: '/s', better: 'higher', rt: fo.rt?.deliveries_per_s, reference: fo.reference?.deliveries_per_s, baseline: fo.baseline?.deliveries_per_s,
      // Issue 11: no regression below the 1.4 M/s measured before it, and the older ≥ 10× baseline.
      fmt: fmtInt, target: '≥ 1.4 M/s and ≥ 10× baseline, zero loss',
      met: fo.rt && fo.baseline ? fo.rt.deliveries_per_s >= 1.4e6 && fo.rt.deliveries_per_s >= 10 * fo.baseline.deliveries_per_s && fo.rt.lost === 0 && fo.rt.duplicates === 0 && fo.rt.reordered === 0 : null,
      note: `rt: ${lossText(fo.rt)}; baseline: ${lossText(fo.baseline)}`,
    });
  }
  for (const l of Array.isArray(r.latency) ? r.latency : []) {
    if (l.error) continue;
    add({
      key: `latency_${l.rate}`, label: `Latency p99 at ${l.rate} events/s × ${fmtInt(l.rt?.clients ?? l.baseline?.clients)} clients`,
      unit: 'µs', better: 'lower', rt: l.rt?.latency_us?.p99, reference: l.reference?.latency_us?.p99, baseline: l.baseline?.latency_us?.p99, fmt: fmtMs,
      target: '≤ reference, zero loss',
      met: l.rt && l.reference ? l.rt.latency_us.p99 <= l.reference.latency_us.p99 && l.rt.lost === 0 : null,
      note: `rt: ${lossText(l.rt)}; baseline: ${lossText(l.baseline)}`,
    });
    if (l.rate === 100 && l.rt?.event_loop_utilization != null) {
      add({
        key: 'elu_100', label: 'JS event-loop utilization of the publishing process at 100 events/s', unit: '', better: 'lower',
        rt: l.rt.event_loop_utilization, reference: l.reference?.event_loop_utilization, baseline: l.baseline?.event_loop_utilization, fmt: (v) => fmtNum(v, 3),
        target: '≤ reference + 0.02',
        met: l.reference?.event_loop_utilization != null ? l.rt.event_loop_utilization <= l.reference.event_loop_utilization + 0.02 : null,
      });
    }
  }
  const m = r.memory;
  if (m && !m.error) {
    add({
      key: 'memory', label: `RSS per idle authenticated connection (${fmtInt(m.rt?.clients ?? m.baseline?.clients)} clients)`,
      unit: 'B', better: 'lower', rt: m.rt?.rss_per_connection, reference: m.reference?.rss_per_connection, baseline: m.baseline?.rss_per_connection, fmt: fmtBytes,
      target: '≤ 2 KiB', met: m.rt ? m.rt.rss_per_connection <= 2048 : null,
    });
  }
  const h = r.handshake;
  if (h && !h.error) {
    for (const x of [h, ...(h.others ?? [])]) {
      const c = x.concurrency ?? x.rt?.concurrency;
      add({
        key: x === h ? 'handshake' : `handshake_${c}`,
        concurrency: c,
        label: `Handshakes/s (TCP + upgrade + JWT verification + welcome${c ? `, ${c} in flight` : ''})`, unit: '/s', better: 'higher',
        rt: x.rt?.handshakes_per_s, reference: x.reference?.handshakes_per_s, baseline: x.baseline?.handshakes_per_s, fmt: fmtInt, target: '≥ reference, ≥ 10× baseline',
        met: x.rt && x.baseline ? x.rt.handshakes_per_s >= 10 * x.baseline.handshakes_per_s && (!x.reference || x.rt.handshakes_per_s >= x.reference.handshakes_per_s) && x.rt.failed === 0 : null,
        note: x.rt?.listen_backlog ? `${c} in flight: listen backlog rt ${x.rt.listen_backlog}, baseline ${x.baseline?.listen_backlog ?? '–'}; p99 handshake rt ${fmtMs(x.rt.handshake_latency_us.p99)}, baseline ${fmtMs(x.baseline?.handshake_latency_us?.p99)}` : undefined,
      });
    }
  }
  const e = r.eventloop;
  if (e && !e.error && (e.rt || e.baseline)) {
    add({
      key: 'eventloop', label: 'JS event-loop delay p99 in the server process during fan-out', unit: 'ms', better: 'lower',
      rt: e.rt?.p99_ms != null ? e.rt.p99_ms * 1000 : null, baseline: e.baseline?.p99_ms != null ? e.baseline.p99_ms * 1000 : null,
      fmt: fmtMs, target: '< 1 ms', met: e.rt ? e.rt.p99_ms < 1 : null,
      note: e.idle?.rt ? `an idle Node process beside the same run (it does nothing but measure): p99 ${fmtNum(e.idle.rt.p99_ms)} ms during rt's run, ${e.idle.baseline ? `${fmtNum(e.idle.baseline.p99_ms)} ms during the baseline's` : '–'}` : undefined,
    });
  }
  for (const pe of e && Array.isArray(e.paced) ? e.paced : []) {
    if (!pe.rt && !pe.baseline) continue;
    add({
      key: `eventloop_${pe.rate}`, label: `JS event-loop delay p99 in the server process while publishing ${pe.rate} events/s`, unit: 'ms', better: 'lower',
      rt: pe.rt ? pe.rt.p99_ms * 1000 : null, baseline: pe.baseline ? pe.baseline.p99_ms * 1000 : null, fmt: fmtMs, target: '', met: null,
    });
  }
  const rd = r.redis;
  if (rd && !rd.error && !rd.skipped) {
    add({
      key: 'redis', label: `Redis: deliveries/s (publisher process → Redis → ${rd.rt?.servers ?? rd.baseline?.servers} server, ${fmtInt(rd.rt?.rate_offered ?? rd.baseline?.rate_offered)} events/s offered)`,
      unit: '/s', better: 'higher', rt: rd.rt?.deliveries_per_s, baseline: rd.baseline?.deliveries_per_s, fmt: fmtInt,
      target: '≥ 1,000,000/s, zero loss',
      met: rd.rt ? rd.rt.deliveries_per_s >= 1e6 && rd.rt.lost === 0 && !rd.rt.backlog_at_cap : null,
      note: `rt: ${lossText(rd.rt)}; baseline: ${lossText(rd.baseline)}`,
    });
    add({
      key: 'redis_p99', label: 'Redis: latency p99 (publish in another process → client)', unit: 'µs', better: 'lower',
      rt: rd.rt?.latency_us?.p99, baseline: rd.baseline?.latency_us?.p99, fmt: fmtMs, target: '', met: null,
    });
  }
  const s = r.scale;
  if (s && !s.error) {
    add({
      key: 'scale', label: 'Concurrent authenticated connections held, each receiving an event', unit: '', better: 'higher',
      rt: s.rt?.max_connections, baseline: s.baseline?.max_connections, fmt: fmtInt, target: '≥ 100,000',
      met: s.rt ? s.rt.max_connections >= 100_000 : null,
      note: `rt stopped: ${s.rt?.stop_reason ?? '–'}; baseline stopped: ${s.baseline?.stop_reason ?? '–'}`,
    });
  }
  return rows;
}

// ---------------------------------------------------------------------------------------------
// SVG: one horizontal bar per headline figure, the improvement factor on a log scale.

function esc(s) {
  return String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

function chartSvg(doc) {
  const rows = doc.summary.filter((r) => r.factor != null);
  const W = 1180;
  const left = 300;
  const right = 330;
  const top = 86;
  const rowH = 34;
  const H = top + rows.length * rowH + 60;
  const plotW = W - left - right;
  const lo = 0.1;
  const hi = Math.max(1000, ...rows.map((r) => Math.max(r.factor, r.refFactor ?? 0) * 1.5));
  const x = (f) => left + ((Math.log10(Math.max(f, lo)) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo))) * plotW;
  const out = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="Helvetica, Arial, sans-serif" font-size="13">`);
  out.push(`<rect width="${W}" height="${H}" fill="#ffffff"/>`);
  out.push(`<text x="${W / 2}" y="24" text-anchor="middle" font-size="16" font-weight="bold">realtime-events vs the plain-Node baseline and the bare tokio reference, same run (higher = better for rt)</text>`);
  const m = doc.meta.machine;
  out.push(`<text x="${W / 2}" y="44" text-anchor="middle" fill="#555">${esc(`${m.nproc} cores (${m.cpu}), ${m.ram_gib} GiB, node ${m.node}, ${m.date.slice(0, 10)} — factor = how many times better than the baseline (thick bar) and than the reference (thin bar), log scale`)}</text>`);
  // grid
  out.push(`<text x="${W - right + 20}" y="${top - 12}" fill="#555" font-weight="bold">rt vs baseline</text>`);
  for (const g of [0.1, 1, 10, 100, 1000, 10000]) {
    if (g > hi) break;
    const gx = x(g);
    out.push(`<line x1="${gx}" y1="${top - 8}" x2="${gx}" y2="${top + rows.length * rowH}" stroke="${g === 1 ? '#333' : '#ddd'}" stroke-width="${g === 1 ? 1.5 : 1}"/>`);
    out.push(`<text x="${gx}" y="${top + rows.length * rowH + 18}" text-anchor="middle" fill="#555">${g === 1 ? '1× (baseline)' : `${g}×`}</text>`);
  }
  rows.forEach((r, i) => {
    const y = top + i * rowH;
    const x0 = x(1);
    const x1 = x(r.factor);
    const good = r.factor >= 1;
    const color = r.met === false ? '#e8a33d' : good ? '#2e8b57' : '#c0392b';
    out.push(`<text x="${left - 10}" y="${y + rowH / 2 + 4}" text-anchor="end">${esc(shortLabel(r))}</text>`);
    const barH = r.refFactor == null ? rowH - 12 : rowH - 18;
    out.push(`<rect x="${Math.min(x0, x1)}" y="${y + 4}" width="${Math.max(2, Math.abs(x1 - x0))}" height="${barH}" fill="${color}" rx="2"/>`);
    out.push(`<text x="${Math.max(x0, x1) + 6}" y="${y + rowH / 2 + 2}" font-weight="bold">${esc(fmtFactor(r.factor))}</text>`);
    if (r.refFactor != null) {
      // The distance to the ceiling: 1× is as good as the bare tokio broadcaster.
      const xr = x(r.refFactor);
      out.push(`<rect x="${Math.min(x0, xr)}" y="${y + rowH - 12}" width="${Math.max(2, Math.abs(xr - x0))}" height="6" fill="#2f6db5" rx="1"/>`);
      out.push(`<text x="${Math.max(x0, xr) + 6}" y="${y + rowH - 5}" font-size="11" fill="#2f6db5">${esc(`${fmtFactor(r.refFactor)} vs ref.`)}</text>`);
    }
    out.push(`<text x="${W - right + 20}" y="${y + rowH / 2 + 4}" fill="#333">${esc(`rt ${r.fmt(r.rt)} vs ${r.fmt(r.baseline)}${r.refFactor == null ? '' : `; ${fmtFactor(r.refFactor)} of reference ${r.fmt(r.reference)}`}${r.target ? ` (target ${r.target.replace(' baseline', '').replace(', zero loss', '')})` : ''}`)}</text>`);
    if (/10× baseline/.test(r.target)) {
      const tx = x(10);
      out.push(`<line x1="${tx}" y1="${y + 3}" x2="${tx}" y2="${y + rowH - 3}" stroke="#000" stroke-width="2" stroke-dasharray="3,2"/>`);
    }
  });
  const ly = top + rows.length * rowH + 38;
  out.push(`<rect x="${left}" y="${ly - 10}" width="12" height="12" fill="#2e8b57"/><text x="${left + 18}" y="${ly}">better than baseline, target met or none</text>`);
  out.push(`<rect x="${left + 270}" y="${ly - 10}" width="12" height="12" fill="#e8a33d"/><text x="${left + 288}" y="${ly}">target missed</text>`);
  out.push(`<line x1="${left + 400}" y1="${ly - 11}" x2="${left + 400}" y2="${ly + 2}" stroke="#000" stroke-width="2" stroke-dasharray="3,2"/><text x="${left + 408}" y="${ly}">10× target</text>`);
  out.push(`<rect x="${left + 500}" y="${ly - 7}" width="12" height="6" fill="#2f6db5"/><text x="${left + 518}" y="${ly}">vs the reference (1× = the ceiling)</text>`);
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}

function shortLabel(r) {
  const map = {
    fanout: 'Fan-out deliveries/s',
    memory: 'Memory per idle connection',
    handshake: `Handshakes/s${r.concurrency ? `, ${r.concurrency} in flight` : ''}`,
    eventloop: 'Event-loop delay p99 (fan-out)',
    redis: 'Redis deliveries/s',
    redis_p99: 'Redis latency p99',
    scale: 'Max concurrent connections',
    sweep: 'Sweep: awaited paced rate',
    sweep_redis: 'Sweep, Redis mode',
    publish_call_p50: 'await publish p50 (500 ev/s)',
    publish_call_p99: 'await publish p99 (500 ev/s)',
    publish_call_redis: 'await publish p99, Redis',
    elu_100: 'JS event-loop use at 100 ev/s',
  };
  if (map[r.key]) return map[r.key];
  const hk = /^handshake_(\d+)$/.exec(r.key);
  if (hk) return `Handshakes/s, ${hk[1]} in flight`;
  const m = /^latency_(\d+)$/.exec(r.key);
  if (m) return `Latency p99 at ${m[1]} events/s`;
  const e = /^eventloop_(\d+)$/.exec(r.key);
  if (e) return `Event-loop delay p99 at ${e[1]} events/s`;
  return r.label;
}

// ---------------------------------------------------------------------------------------------
// Markdown

function table(header, rows) {
  const lines = [`| ${header.join(' | ')} |`, `|${header.map((h, i) => (i === 0 ? ' --- ' : ' ---: ')).join('|')}|`];
  for (const r of rows) lines.push(`| ${r.join(' | ')} |`);
  return lines.join('\n');
}

function markdown(doc) {
  const { meta, results, summary } = doc;
  const m = meta.machine;
  const o = meta.options;
  const L = [];
  L.push('# Benchmarks');
  L.push('');
  L.push('<!-- Generated by bench/run.js; re-run the command below to refresh. Do not edit by hand. -->');
  L.push('');
  L.push(`**realtime-events** (this package: Rust engine behind the Node addon, events published with \`publishParcelUpdate\` from the Node process that hosts the server) against the near-limit **reference**, a bare tokio-tungstenite broadcaster (no auth, one shared pre-encoded frame per event, batched writes, published to over a pipe: [\`bench/reference\`](bench/reference)), and the **baseline**, the original design in plain Node (\`ws\` + \`jsonwebtoken\` + EventEmitter / node-redis, kept in [\`bench/server-baseline.js\`](bench/server-baseline.js)). All three run in the same benchmark run, on the same machine, driven by the same Rust load generator ([\`bench/loadgen\`](bench/loadgen)); every factor below is a ratio between two of them from that run: the distance to the reference is the figure that counts, the factor over the baseline shows what the design buys. How it works and what each scenario measures: [\`bench/README.md\`](bench/README.md).`);
  L.push('');
  L.push('## Command');
  L.push('');
  L.push('```sh');
  L.push('npm run build   # the addon, release');
  L.push(meta.command);
  L.push('```');
  L.push('');
  L.push(`Run took ${Math.round(meta.total_secs)} s. Raw figures: [\`bench/results/latest.json\`](bench/results/latest.json).`);
  L.push('');
  L.push('## Machine');
  L.push('');
  L.push(table(['', ''], [
    ['CPU', `${m.nproc} cores (\`nproc\`), ${m.cpu}; shared with the load generator (and with other tenants)`],
    ['RAM', `${m.ram_gib} GiB`],
    ['Kernel', m.kernel],
    ['Node', m.node],
    ['Rust', m.rustc ?? '–'],
    ['Redis', m.redis ?? 'not installed'],
    ['Open files per process', `${m.nofile_limit} (hard limit${m.nofile_raisable === false ? '; cannot be raised here: no CAP_SYS_RESOURCE' : ''})`],
    ['Other load', meta.background ? `at most ${fmtNum(meta.max_background_cores)} cores busy with other processes right before a measured run (the suite waits up to ${meta.quiet_wait_s ?? 60} s for < 0.25)` : '–'],
    ['Date', m.date],
    ['Commit', m.commit ?? '–'],
  ]));
  L.push('');
  L.push('## At a glance');
  L.push('');
  L.push('![rt vs baseline and vs reference, improvement factors](bench/results/chart.svg)');
  L.push('');
  L.push(table(['Figure', 'realtime-events', 'reference', 'baseline', 'rt vs reference', 'rt vs baseline', 'Target', 'Met'], summary.map((r) => [
    r.label, r.fmt(r.rt), r.reference == null ? '–' : r.fmt(r.reference), r.fmt(r.baseline), r.refFactor == null ? '–' : fmtFactor(r.refFactor), r.factor == null ? '–' : `**${fmtFactor(r.factor)}** ${r.better === 'higher' ? 'more' : 'less'}`,
    r.target || '–', r.met == null ? '–' : r.met ? 'yes' : '**no**',
  ])));
  L.push('');
  for (const r of summary) if (r.note) L.push(`- ${shortLabel(r)}: ${r.note}`);
  L.push('');
  L.push('## Scenarios');
  L.push('');
  const impls = o.impls;
  const fo = results.fanout;
  if (fo) {
    L.push(`### 1. Fan-out: ${fmtInt(o.clients)} clients, publish as fast as the API accepts for ${o.duration} s`);
    L.push('');
    if (fo.error) L.push(`Failed: ${fo.error}`);
    else {
      L.push(table(['', ...impls], [
        ['events published', ...impls.map((i) => fmtInt(fo[i]?.published))],
        ['publish rate (events/s)', ...impls.map((i) => fmtInt(fo[i]?.publish_rate))],
        ['deliveries/s (first publish → last delivery)', ...impls.map((i) => fmtInt(fo[i]?.deliveries_per_s))],
        ['lost / duplicated / reordered', ...impls.map((i) => (fo[i] ? `${fmtInt(fo[i].lost)} / ${fmtInt(fo[i].duplicates)} / ${fmtInt(fo[i].reordered)}` : '–'))],
        ['clients cut', ...impls.map((i) => fmtInt(fo[i]?.disconnected))],
        ['latency p50 / p99 under saturation', ...impls.map((i) => (fo[i] ? `${fmtMs(fo[i].latency_us.p50)} / ${fmtMs(fo[i].latency_us.p99)}` : '–'))],
        ['CPU s: server / load generator', ...impls.map((i) => (fo[i] ? `${fmtNum(fo[i].cpu_s.server)} / ${fmtNum(fo[i].cpu_s.loadgen)}` : '–'))],
        ['JS event-loop utilization', ...impls.map((i) => fmtNum(fo[i]?.event_loop_utilization))],
      ]));
      L.push('');
      L.push('The rt publisher keeps at most 1,000 `publishParcelUpdate` promises in flight (chunks of 100 per turn of the event loop); the baseline publishes one event per turn of the event loop (`setImmediate`), each event being sent to every client synchronously. Latency here is queueing under saturation, not the latency figure (see 2).');
      L.push('');
    }
  }
  if (Array.isArray(results.latency) || results.latency?.error) {
    L.push(`### 2. Latency: ${fmtInt(o.clients)} clients at a fixed publish rate for ${o.latencyDuration} s`);
    L.push('');
    if (results.latency.error) L.push(`Failed: ${results.latency.error}`);
    else {
      const rows = [];
      for (const l of results.latency) {
        for (const i of impls) {
          const f = l[i];
          if (!f) continue;
          rows.push([`${l.rate}/s`, i, fmtMs(f.latency_us.p50), fmtMs(f.latency_us.p99), fmtMs(f.latency_us.p999), fmtMs(f.latency_us.max), fmtInt(f.deliveries_per_s), lossText(f)]);
        }
      }
      L.push(table(['rate', 'impl', 'p50', 'p99', 'p99.9', 'max', 'deliveries/s', 'integrity'], rows));
      L.push('');
      L.push('Latency is publish call → frame parsed by the client, from the `process.hrtime.bigint()` carried in the parcel id and `clock_gettime(CLOCK_MONOTONIC)` in the load generator (the same clock), over every delivery to every client. When a design cannot keep up, its backlog is still being sent at the drain cap: those events are reported as "still queued", and its percentiles only cover what arrived (they understate its latency).');
      L.push('');
    }
  }
  const mem = results.memory;
  if (mem) {
    L.push(`### 3. Memory: ${fmtInt(o.memClients)} idle authenticated connections`);
    L.push('');
    if (mem.error) L.push(`Failed: ${mem.error}`);
    else {
      L.push(table(['', ...impls], [
        ['server RSS before (warm, a few clients)', ...impls.map((i) => fmtBytes(mem[i]?.rss_before))],
        ['server RSS with the idle clients', ...impls.map((i) => fmtBytes(mem[i]?.rss_after))],
        ['RSS growth per connection', ...impls.map((i) => fmtBytes(mem[i]?.rss_per_connection))],
        ['JS heap growth per connection', ...impls.map((i) => fmtBytes(mem[i]?.heap_per_connection))],
        ['an event then reached', ...impls.map((i) => (mem[i] ? `${fmtInt(mem[i].delivery_check.delivered)} / ${fmtInt(mem[i].delivery_check.clients)}` : '–'))],
      ]));
      L.push('');
      L.push('RSS of the server process (`/proc` via `process.memoryUsage().rss`) after a full GC, before and after the clients connect; kernel socket buffers are not in it (same for both designs).');
      L.push('');
    }
  }
  const hs = results.handshake;
  if (hs) {
    const conc = Array.isArray(o.handshakeConcurrency) ? o.handshakeConcurrency : [o.handshakeConcurrency];
    L.push(`### 4. Connection rate: ${fmtInt(o.handshakeClients)} clients in ${o.handshakeRounds ?? 1} rounds, ${conc.join(' (headline), then ')} handshakes in flight`);
    L.push('');
    if (hs.error) L.push(`Failed: ${hs.error}`);
    const hsAll = results.handshake;
    for (const hs of hsAll.error ? [] : [hsAll, ...(hsAll.others ?? [])]) {
      if (hs !== hsAll) {
        L.push(`With ${hs.concurrency} handshakes in flight:`);
        L.push('');
      }
      L.push(table(['', ...impls], [
        ['handshakes/s (median round)', ...impls.map((i) => fmtInt(hs[i]?.handshakes_per_s))],
        ['rounds', ...impls.map((i) => (hs[i]?.rounds ? hs[i].rounds.map(fmtInt).join(', ') : '–'))],
        ['failed', ...impls.map((i) => fmtInt(hs[i]?.failed))],
        ['handshake latency p50 / p99', ...impls.map((i) => (hs[i] ? `${fmtMs(hs[i].handshake_latency_us.p50)} / ${fmtMs(hs[i].handshake_latency_us.p99)}` : '–'))],
        ['server CPU per handshake', ...impls.map((i) => (hs[i] ? `${fmtInt(hs[i].server_cpu_us_per_handshake)} µs` : '–'))],
        ['CPU s: server / load generator (median round)', ...impls.map((i) => (hs[i] ? `${fmtNum(hs[i].cpu_s.server)} / ${fmtNum(hs[i].cpu_s.loadgen)}` : '–'))],
        ['listen backlog (accept queue)', ...impls.map((i) => fmtInt(hs[i]?.listen_backlog))],
      ]));
      L.push('');
    }
    if (!hs.error) {
      L.push('A handshake is TCP connect → HTTP upgrade with `?token=` (HS256 verified by the server) → 101 → welcome frame received. The client side of every handshake runs on the same 2 cores. When more connections arrive at once than the listen backlog holds, the kernel drops SYNs and those clients retry after 1 s: a p99 near 1,000 ms is that.');
      L.push('');
    }
  }
  const el = results.eventloop;
  if (el) {
    L.push('### 5. JS event-loop delay in the server process during fan-out (scenario 1)');
    L.push('');
    if (el.error) L.push(`Failed: ${el.error}`);
    else {
      L.push(table(['', ...impls], [
        ['p50', ...impls.map((i) => (el[i] ? `${fmtNum(el[i].p50_ms)} ms` : '–'))],
        ['p99', ...impls.map((i) => (el[i] ? `${fmtNum(el[i].p99_ms)} ms` : '–'))],
        ['p99.9', ...impls.map((i) => (el[i] ? `${fmtNum(el[i].p999_ms)} ms` : '–'))],
        ['max', ...impls.map((i) => (el[i] ? `${fmtNum(el[i].max_ms)} ms` : '–'))],
      ]));
      L.push('');
      if (el.idle && impls.some((i) => el.idle[i])) {
        L.push('The floor: an idle Node process running beside the same run, doing nothing but measure its own loop the same way:');
        L.push('');
        L.push(table(['idle process, during the run of', ...impls], ['p50', 'p99', 'p999', 'max'].map((k) => [k === 'p999' ? 'p99.9' : k, ...impls.map((i) => (el.idle[i] ? `${fmtNum(el.idle[i][`${k}_ms`])} ms` : '–'))])));
        L.push('');
      }
      for (const pe of el.paced ?? []) {
        L.push('');
        L.push(`While publishing at a steady ${pe.rate} events/s (scenario 2)${pe.idle ? ', with the idle process beside each run' : ''}:`);
        L.push('');
        const cols = pe.idle ? impls.flatMap((i) => [[i, pe[i]], [`idle process (${i} run)`, pe.idle[i]]]) : impls.map((i) => [i, pe[i]]);
        L.push(table(['', ...cols.map(([h]) => h)], ['p50', 'p99', 'p999', 'max'].map((k) => [k === 'p999' ? 'p99.9' : k, ...cols.map(([, v]) => (v ? `${fmtNum(v[`${k}_ms`])} ms` : '–'))])));
      }
      L.push('');
      L.push('`perf_hooks.monitorEventLoopDelay({ resolution: 1 })` while scenario 1 publishes; the delay is what exceeds the 1 ms sampling interval (an idle loop on a quiet machine reads about 0.1 ms). It includes the time the JS thread waits for a core: on 2 cores the server\'s threads, the load generator\'s threads and the publisher share them, and the idle process above shows what that alone costs. During fan-out the JS thread is also the publisher itself, calling `publishParcelUpdate` as fast as the API accepts (chunks of 100, at most 1,000 promises in flight); each call is a numbered enqueue into the engine, and the engine settles the promises in batches through one napi thread-safe function. The steady-rate figures are closer to what an application sees.');
      L.push('');
    }
  }
  const rd = results.redis;
  if (rd) {
    L.push(`### 6. Redis: publisher process → Redis → ${o.redisServers} server process(es) → ${fmtInt(o.clients)} clients, ${fmtInt(o.redisRate)} events/s for ${o.duration} s`);
    L.push('');
    if (rd.skipped) L.push(`Skipped: ${rd.skipped}.`);
    else if (rd.error) L.push(`Failed: ${rd.error}`);
    else {
      L.push(table(['', ...impls], [
        ['events published', ...impls.map((i) => fmtInt(rd[i]?.published))],
        ['deliveries/s', ...impls.map((i) => fmtInt(rd[i]?.deliveries_per_s))],
        ['integrity', ...impls.map((i) => lossText(rd[i]))],
        ['latency p50 / p99 / max', ...impls.map((i) => (rd[i] ? `${fmtMs(rd[i].latency_us.p50)} / ${fmtMs(rd[i].latency_us.p99)} / ${fmtMs(rd[i].latency_us.max)}` : '–'))],
        ['CPU s: servers / publisher / load generator', ...impls.map((i) => (rd[i] ? `${fmtNum(rd[i].cpu_s.server)} / ${fmtNum(rd[i].cpu_s.publisher)} / ${fmtNum(rd[i].cpu_s.loadgen)}` : '–'))],
      ]));
      L.push('');
      L.push('The suite starts its own `redis-server` on a free port with `--save \'\' --appendonly no` and `client-output-buffer-limit pubsub 0 0 0`: Redis\'s default limit disconnects a subscriber that falls 32 MB behind, which would turn a slow design\'s backlog into a disconnection; without it both designs are judged on delivery alone. The rt publisher is a Node process calling `publishParcelUpdate` with `REDIS_URL` set (no server); the baseline publisher calls node-redis `PUBLISH`.');
      L.push('');
    }
  }
  const sc = results.scale;
  if (sc) {
    L.push(`### 7. Scale: connections held by one server process (steps of ${fmtInt(o.scaleStep)}, up to ${fmtInt(o.scaleMax)})`);
    L.push('');
    if (sc.error) L.push(`Failed: ${sc.error}`);
    else {
      const rows = [];
      for (const i of impls) {
        for (const s of sc[i]?.steps ?? []) {
          rows.push([i, fmtInt(s.live), `+${fmtInt(s.ok)}${s.failed ? ` (${fmtInt(s.failed)} failed)` : ''}`, fmtNum(s.connect_secs, 1), `${fmtInt(s.delivered)} / ${fmtInt(s.live)}`, fmtMs(s.delivery_latency_max_ms * 1000), fmtBytes(s.server_rss)]);
        }
      }
      L.push(table(['impl', 'connected', 'this step', 'connect s', 'event delivered to', 'slowest delivery', 'server RSS'], rows));
      L.push('');
      for (const i of impls) if (sc[i]) L.push(`- ${i}: **${fmtInt(sc[i].max_connections)}** connections; stopped because: ${sc[i].stop_reason}. Server's open-file limit: ${fmtInt(sc[i].server_nofile_limit)}.`);
      L.push('');
      L.push('Clients connect from several loopback source addresses (127.20.x.y), so ephemeral ports never run out; each load-generator process holds at most its own open-file limit, and more are started as needed.');
      L.push('');
    }
  }
  if (doc.problems?.length) {
    L.push('## Integrity problems in this run');
    L.push('');
    for (const p of doc.problems) L.push(`- ${p}`);
    L.push('');
  }
  return `${L.join('\n')}\n`;
}

function textTable(doc) {
  // Targets are meant for full-size runs; the smoke run's tiny sizes say nothing about them.
  const smoke = doc.meta.options.smoke;
  const rows = doc.summary.map((r) => [shortLabel(r), r.fmt(r.rt), r.reference == null ? '-' : r.fmt(r.reference), r.fmt(r.baseline), r.refFactor == null ? '-' : fmtFactor(r.refFactor), fmtFactor(r.factor), smoke ? '' : r.target || '', smoke || r.met == null ? '' : r.met ? 'met' : 'MISSED']);
  const header = ['figure', 'rt', 'reference', 'baseline', 'vs ref', 'vs baseline', smoke ? '' : 'target', ''];
  const all = [header, ...rows];
  const widths = header.map((_, i) => Math.max(...all.map((r) => String(r[i]).length)));
  return all.map((r) => r.map((c, i) => String(c).padEnd(widths[i])).join('  ')).join('\n');
}

module.exports = { summarize, chartSvg, markdown, textTable, IMPL_NAMES };
