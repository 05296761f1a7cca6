// Scenarios 8 (sweep) and 9 (publishlatency): paced publishes, each awaited as a request handler
// would (one per turn of the event loop). See bench/README.md. `h` holds run.js's helpers.
'use strict';

const path = require('node:path');

module.exports = (h) => {
  const { startServer, stopServer, startLoadgen, connectAll, publishAndCollect, log, Child, sleep } = h;

  /** Servers + clients of one side (memory mode, or Redis mode with a separate publisher). */
  async function setup(impl, o, redisUrl) {
    const s = { servers: [], lgs: [], publisher: null };
    const server = await startServer(impl, redisUrl ? ['--redis', redisUrl] : []);
    s.servers.push(server);
    const lg = await startLoadgen(server.port, o.clients);
    s.lgs.push(lg);
    const c = await connectAll(lg, o.clients);
    if (c.ok !== o.clients) throw new Error(`connected ${c.ok}/${o.clients}: ${JSON.stringify(c)}`);
    if (redisUrl) {
      const script = path.join(__dirname, '..', impl === 'rt' ? 'server-rt.js' : 'server-baseline.js');
      s.publisher = new Child(`${impl}-publisher`, process.execPath, [script, '--publisher-only', '--redis', redisUrl], {
        env: { ...process.env, LOG_LEVEL: process.env.LOG_LEVEL ?? 'warn' },
      });
      const ready = await s.publisher.next(30_000);
      if (ready.event !== 'ready') throw new Error(`publisher: ${JSON.stringify(ready)}`);
      await sleep(500);
    } else {
      s.publisher = server;
    }
    return s;
  }

  async function teardown(s) {
    if (s.publisher && !s.servers.includes(s.publisher)) await s.publisher.stop('{"cmd":"quit"}');
    for (const lg of s.lgs) await lg.stop('quit');
    for (const srv of s.servers) await stopServer(srv);
  }

  /** Why a sweep step fails, or null when it passes. */
  function stepFailure(f) {
    if (f.lost > 0 || f.backlog_at_cap > 0) return `loss ${f.lost || f.backlog_at_cap}`;
    if (f.duplicates > 0 || f.reordered > 0) return `duplicates ${f.duplicates}, reordered ${f.reordered}`;
    if ((f.latency_us?.p99 ?? 0) >= 100_000) return `p99 ${(f.latency_us.p99 / 1000).toFixed(1)} ms ≥ 100 ms`;
    if (f.scheduled && f.published < 0.95 * f.scheduled) return `published ${f.published} < 95 % of ${f.scheduled}`;
    return null;
  }

  /** 8: the highest awaited paced rate that passes; rate doubled from sweepStart in steps. */
  async function sweep(impl, o, redisUrl) {
    const s = await setup(impl, o, redisUrl);
    const steps = [];
    let base = 2_000_000;
    let best = 0;
    let stop = `reached --sweep-max ${o.sweepMax}`;
    try {
      for (let rate = o.sweepStart; rate <= o.sweepMax; rate *= 2) {
        const f = await publishAndCollect(s.publisher, s.lgs, s.servers, { rate, duration: o.sweepStep, awaited: true }, o.drainCapMs, base);
        base += f.published + 10;
        const why = stepFailure(f);
        steps.push({ rate, published: f.published, scheduled: f.scheduled, lost: f.lost, backlog_at_cap: f.backlog_at_cap ?? 0, duplicates: f.duplicates, reordered: f.reordered, p50_us: f.latency_us?.p50, p99_us: f.latency_us?.p99, call_latency_us: f.call_latency_us, failed: why });
        log(`sweep: ${impl}${redisUrl ? ' (redis)' : ''} @${rate}/s: ${why ? `FAILS (${why})` : 'passes'}; p99 ${((f.latency_us?.p99 ?? 0) / 1000).toFixed(1)} ms`);
        if (why) {
          stop = `${rate}/s: ${why}`;
          break;
        }
        best = rate;
      }
    } finally {
      await teardown(s);
    }
    // Integrity figures: duplicates/reordering anywhere; loss only below the failing step (a
    // failing step's loss is the measurement, not a defect).
    return {
      max_rate: best, stop_reason: stop, clients: o.clients, step_s: o.sweepStep, steps,
      lost: steps.reduce((a, x) => a + x.lost + x.backlog_at_cap, 0),
      duplicates: steps.reduce((a, x) => a + x.duplicates, 0),
      reordered: steps.reduce((a, x) => a + x.reordered, 0),
    };
  }

  /** 9: publish-call latency (call → promise settled) at a steady awaited rate. */
  async function publishLatency(impl, o, redisUrl) {
    const s = await setup(impl, o, redisUrl);
    try {
      const f = await publishAndCollect(s.publisher, s.lgs, s.servers, { rate: o.publishLatencyRate, duration: o.latencyDuration, awaited: true }, o.drainCapMs, 3_000_000);
      f.rate = o.publishLatencyRate;
      return f;
    } finally {
      await teardown(s);
    }
  }

  const fmtUs = (v) => (v == null ? '-' : `${(v / 1000).toFixed(2)} ms`);

  return {
    sweep: {
      run: async (o, results) => {
        const out = {};
        for (const impl of o.impls) {
          log(`sweep: ${impl}, ${o.clients} clients, awaited publishes from ${o.sweepStart}/s doubling, ${o.sweepStep} s steps`);
          out[impl] = await sweep(impl, o);
          log(`sweep: ${impl}: ${out[impl].max_rate}/s (${out[impl].stop_reason})`);
        }
        if (o.impls.includes('rt') && o.redisUrl) {
          out.rt_redis = await sweep('rt', o, o.redisUrl);
          log(`sweep: rt (redis): ${out.rt_redis.max_rate}/s (${out.rt_redis.stop_reason})`);
        }
        results.sweep = out;
      },
    },
    publishlatency: {
      run: async (o, results) => {
        const out = {};
        // The reference's "publish" is a pipe write (nothing to await): measured, but say so.
        for (const impl of o.impls) out[impl] = await publishLatency(impl, o);
        if (o.impls.includes('rt') && o.redisUrl) out.rt_redis = await publishLatency('rt', o, o.redisUrl);
        for (const [k, v] of Object.entries(out)) log(`publishlatency: ${k} @${o.publishLatencyRate}/s × ${o.clients}: call p50 ${fmtUs(v.call_latency_us?.p50)}, p99 ${fmtUs(v.call_latency_us?.p99)}${v.redis_rtt_us ? `; bare Redis round trip p50 ${fmtUs(v.redis_rtt_us.p50)}, p99 ${fmtUs(v.redis_rtt_us.p99)}` : ''}; lost ${v.lost}`);
        results.publishlatency = out;
      },
    },
  };
};
