// The control protocol both bench servers speak (server-rt.js and server-baseline.js): one JSON
// command per stdin line, one JSON answer per stdout line. Diagnostics go to stderr.
//
//   {"cmd":"stats","gc":true}            RSS, heap, clients, CPU time (after a full GC if asked)
//   {"cmd":"publish","base":B,"rate":R,"duration":S,"count":C,"window":W,"chunk":K}
//        publishes ids b<seq>-<process.hrtime.bigint()> from seq B: R events/s (0 = as fast as
//        the API accepts), for S seconds or C events, whichever comes first; answers with the
//        count, the monotonic start/end, and the event-loop delay measured meanwhile
//   {"cmd":"quit"}
'use strict';

const { monitorEventLoopDelay, performance } = require('node:perf_hooks');
const readline = require('node:readline');

function send(obj) {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

const nowNs = () => process.hrtime.bigint();
const tick = () => new Promise((resolve) => setImmediate(resolve));
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const ELD_RESOLUTION_MS = 1;

/**
 * Node records the whole interval between two ticks of its 1 ms sampling timer; the delay is
 * what exceeds the interval (an idle loop reads ~0.1 ms).
 */
function eldSummary(h) {
  const ms = (v) => Math.max(0, Number(v) / 1e6 - ELD_RESOLUTION_MS);
  return {
    count: h.count,
    mean_ms: ms(h.mean),
    p50_ms: ms(h.percentile(50)),
    p99_ms: ms(h.percentile(99)),
    p999_ms: ms(h.percentile(99.9)),
    max_ms: ms(h.max),
  };
}

/**
 * `publishOne(id)` returns a promise (the package's API) or undefined (the baseline, which has
 * fanned the event out synchronously by the time it returns).
 */
async function publishRun(publishOne, opts, probe) {
  const base = opts.base ?? 0;
  const rate = opts.rate ?? 0;
  const durationMs = (opts.duration ?? 10) * 1000;
  const maxCount = opts.count ?? Infinity;
  const window = opts.window ?? 1000; // promises in flight at most
  const chunk = opts.chunk ?? 100; // publishes per turn of the event loop
  let seq = base;
  let scheduled = null;
  let errors = 0;
  let firstError = null;
  const inflight = [];
  let inflightCount = 0;
  const callNs = [];
  const probeNs = [];
  // Optional publisher data of about `dataBytes` (the package's API takes it; the baseline
  // ignores it).
  const data = opts.dataBytes ? { note: 'x'.repeat(opts.dataBytes) } : undefined;
  const onError = (err) => {
    errors += 1;
    if (!firstError) firstError = `${err.code || ''} ${err.message}`;
  };
  /** Publishes the next id, stamped with `stampNs(k)` (k: its index in this run). */
  const publishNext = (stampNs) => {
    const id = `b${seq}-${stampNs(seq - base)}`;
    seq += 1;
    try {
      return data === undefined ? publishOne(id) : publishOne(id, data);
    } catch (err) {
      onError(err);
      return undefined;
    }
  };
  const one = () => publishNext(nowNs);

  const eld = monitorEventLoopDelay({ resolution: ELD_RESOLUTION_MS });
  const elu0 = performance.eventLoopUtilization();
  const cpu0 = process.cpuUsage();
  eld.enable();
  const t0 = performance.now();
  const startNs = nowNs();
  const done = () => seq - base >= maxCount || performance.now() - t0 >= durationMs;

  if (rate <= 0) {
    // As fast as the API accepts: chunks of `chunk` calls, at most `window` unresolved.
    while (!done()) {
      const ps = [];
      for (let i = 0; i < chunk && !done(); i++) {
        const p = one();
        if (p) ps.push(p);
      }
      if (ps.length) {
        const n = ps.length;
        inflight.push(Promise.all(ps).then(() => n, (err) => (onError(err), n)));
        inflightCount += n;
        while (inflightCount >= window && inflight.length) inflightCount -= await inflight.shift();
      }
      await tick();
    }
  } else if (opts.awaited) {
    // Paced and awaited, as a request handler would: one publish per turn of the event loop,
    // each awaited before the next; the time from the call to its promise settling is recorded
    // (publish-call latency). Ids carry the DUE time (no coordinated omission).
    const intervalNs = 1e9 / rate;
    const dueNs = (k) => startNs + BigInt(Math.round(k * intervalNs));
    scheduled = Math.min(Math.floor((durationMs / 1000) * rate), maxCount);
    // Beside it, when the server gives one (the Redis publisher), a bare round trip to the same
    // Redis every 10 ms: what "one Redis round trip" costs under this load, for the call's target.
    const probing = probe && (async () => {
      while (!done()) {
        const p0 = nowNs();
        await probe();
        probeNs.push(Number(nowNs() - p0));
        await sleep(10);
      }
    })();
    while (!done()) {
      const due = Math.min(Math.floor(((performance.now() - t0) / 1000) * rate), maxCount);
      if (seq - base < due) {
        const c0 = nowNs();
        try {
          await publishNext(dueNs);
        } catch (err) {
          onError(err);
        }
        callNs.push(Number(nowNs() - c0));
        await tick();
      } else {
        await sleep(1);
      }
    }
    await probing;
  } else {
    // Paced: every ~1 ms, publish what is due by now. Each id carries the time its event was
    // DUE (start + k / rate), not the time the call finally happened: a publisher held up by a
    // busy event loop counts against the design (no coordinated omission).
    const pending = [];
    const intervalNs = 1e9 / rate;
    const dueNs = (k) => startNs + BigInt(Math.round(k * intervalNs));
    const publishDue = () => {
      const p = publishNext(dueNs);
      if (p) pending.push(p.catch(onError));
    };
    while (!done()) {
      const due = Math.min(Math.floor(((performance.now() - t0) / 1000) * rate), maxCount);
      while (seq - base < due && !done()) publishDue();
      if (pending.length > 10000) inflight.push(Promise.all(pending.splice(0, pending.length)));
      await sleep(1);
    }
    // The loop ends on the clock between two ticks: publish what fell due up to the end of the
    // duration (for at most 100 ms, so a publisher that is far behind stays behind).
    scheduled = Math.min(Math.floor((durationMs / 1000) * rate), maxCount);
    const catchUpEnd = performance.now() + 100;
    while (seq - base < scheduled && performance.now() < catchUpEnd) publishDue();
    inflight.push(Promise.all(pending));
  }
  await Promise.all(inflight);
  const endNs = nowNs();
  eld.disable();
  const elu = performance.eventLoopUtilization(elu0);
  const cpu = process.cpuUsage(cpu0);
  return {
    event: 'published',
    base,
    published: seq - base,
    // Paced runs: events that were due within the duration but never published because the
    // publisher's event loop was too busy to call publish in time.
    scheduled,
    not_published: scheduled == null ? 0 : Math.max(0, scheduled - (seq - base)),
    errors,
    first_error: firstError,
    start_ns: startNs.toString(),
    end_ns: endNs.toString(),
    secs: Number(endNs - startNs) / 1e9,
    rate_achieved: (seq - base) / (Number(endNs - startNs) / 1e9),
    event_loop_delay: eldSummary(eld),
    event_loop_utilization: elu.utilization,
    cpu_user_s: cpu.user / 1e6,
    cpu_system_s: cpu.system / 1e6,
    call_latency_us: callNs.length ? callSummary(callNs) : undefined,
    redis_rtt_us: probeNs.length ? callSummary(probeNs) : undefined,
  };
}

/** p50/p99/max (µs) of the publish-call (or probe) durations of an awaited run. */
function callSummary(values) {
  const v = Float64Array.from(values).sort();
  const at = (q) => v[Math.min(v.length - 1, Math.floor(q * v.length))] / 1000;
  return { count: v.length, p50: at(0.5), p99: at(0.99), max: v[v.length - 1] / 1000 };
}

function stats(clientCount, gc) {
  if (gc && global.gc) {
    for (let i = 0; i < 3; i++) global.gc();
  }
  let m;
  try {
    m = process.memoryUsage();
  } catch {
    // EMFILE at the open-file limit (the scale scenario): the driver reads /proc itself.
    m = { rss: null, heapUsed: null, external: null };
  }
  const cpu = process.cpuUsage();
  return {
    event: 'stats',
    rss: m.rss,
    heap_used: m.heapUsed,
    external: m.external,
    clients: clientCount(),
    cpu_user_s: cpu.user / 1e6,
    cpu_system_s: cpu.system / 1e6,
    now_ns: nowNs().toString(),
  };
}

/** Serves the protocol until `quit` or stdin closes; `close()` stops the server. */
function serve({ publishOne, clientCount, close, hello, probe }) {
  send({ event: 'ready', pid: process.pid, ...hello });
  const rl = readline.createInterface({ input: process.stdin });
  let queue = Promise.resolve();
  const quit = async () => {
    try {
      await close();
    } finally {
      send({ event: 'bye' });
      process.exit(0);
    }
  };
  rl.on('line', (line) => {
    if (!line.trim()) return;
    queue = queue.then(async () => {
      let msg;
      try {
        msg = JSON.parse(line);
      } catch {
        send({ event: 'error', message: `bad JSON: ${line}` });
        return;
      }
      try {
        if (msg.cmd === 'stats') send(stats(clientCount, msg.gc));
        else if (msg.cmd === 'publish') send(await publishRun(publishOne, msg, probe));
        else if (msg.cmd === 'quit') await quit();
        else send({ event: 'error', message: `unknown command ${msg.cmd}` });
      } catch (err) {
        send({ event: 'error', message: err.stack || String(err) });
      }
    });
  });
  rl.on('close', () => {
    queue.then(quit);
  });
}

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) continue;
    const key = a.slice(2);
    const next = argv[i + 1];
    if (next === undefined || next.startsWith('--')) out[key] = true;
    else {
      out[key] = next;
      i += 1;
    }
  }
  return out;
}

module.exports = { serve, parseArgs, send, eldSummary, ELD_RESOLUTION_MS };
