// A private redis-server on a free loopback port, without persistence.
'use strict';

const net = require('node:net');
const { spawnSync } = require('node:child_process');

const { freePort } = require('./ports');
const { Child } = require('./proc');
const { waitUntil } = require('./wait');

function redisInstalled() {
  return ['redis-server', 'redis-cli'].every((cmd) => {
    const r = spawnSync(cmd, ['--version'], { encoding: 'utf8' });
    return !r.error && r.status === 0;
  });
}

/** The path of redis-server, or null when it is not on PATH. */
function findRedisServer() {
  const r = spawnSync('bash', ['-c', 'command -v redis-server'], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : null;
}

/**
 * The `skip` option for Redis tests: a reason when redis-server is missing, unless
 * REQUIRE_REDIS=1, in which case the tests run (and fail).
 */
function redisSkipReason() {
  if (redisInstalled()) return false;
  if (process.env.REQUIRE_REDIS === '1') return false;
  return 'redis-server/redis-cli are not installed (set REQUIRE_REDIS=1 to make this a failure)';
}

function redisCli(port, args) {
  const r = spawnSync('redis-cli', ['-h', '127.0.0.1', '-p', String(port), ...args], { encoding: 'utf8', timeout: 5000 });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Whether a Redis server answers PING on `port` within a second. */
function redisPing(port) {
  return new Promise((resolve) => {
    const sock = net.connect(port, '127.0.0.1');
    let buf = '';
    const timer = setTimeout(() => {
      sock.destroy();
      resolve(false);
    }, 1000);
    const done = (ok) => {
      clearTimeout(timer);
      sock.destroy();
      resolve(ok);
    };
    sock.on('connect', () => sock.write('PING\r\n'));
    sock.on('data', (d) => {
      buf += d;
      if (buf.includes('PONG')) done(true);
    });
    sock.on('error', () => done(false));
  });
}

/**
 * Starts a private redis-server (`bin`, default from PATH) on `port` (default: a free one) on
 * loopback, without persistence, with `args` added to its command line, and waits until
 * `ready(port)` (default: it answers PING).
 * Returns {url, port, pid, child (also as proc), stop(), kill(signal), restart()}.
 */
async function startRedis({ bin = 'redis-server', args = [], port, ready = redisPing } = {}) {
  if (bin === 'redis-server' && !redisInstalled()) throw new Error('redis-server or redis-cli is not installed (REQUIRE_REDIS=1)');
  port = port ?? (await freePort());
  let child = null;
  const launch = async () => {
    child = new Child('redis', bin, [
      '--port', String(port), '--save', '', '--appendonly', 'no', '--bind', '127.0.0.1', ...args,
    ]);
    await waitUntil(async () => {
      if (child.exitInfo) throw new Error(`redis-server exited: ${child.out()} ${child.err()}`);
      return ready(port);
    }, `redis-server on port ${port} answers PING`, 10_000, 50);
  };
  await launch();
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    get pid() {
      return child.pid;
    },
    /** The redis-server process (replaced by restart()). */
    get child() {
      return child;
    },
    get proc() {
      return child;
    },
    /** Sends `signal` and waits for the process to be gone. */
    async kill(signal = 'SIGKILL') {
      await child.stop(signal);
    },
    async stop() {
      await child.stop('SIGTERM');
    },
    /** Starts it again on the same port (after kill/stop). */
    async restart() {
      if (!child.exitInfo) await child.stop('SIGKILL');
      await launch();
    },
  };
}

/**
 * For the benchmark: redis-server `bin` without the pub/sub output buffer limit (by default
 * Redis disconnects a subscriber that falls 32 MB behind, which would turn the baseline's
 * backlog into a disconnection; with `pubsub 0 0 0` both designs are judged on delivery alone).
 */
function startBenchRedis(bin) {
  return startRedis({ bin, args: ['--client-output-buffer-limit', 'pubsub 0 0 0', '--loglevel', 'warning'] });
}

module.exports = { redisInstalled, findRedisServer, redisSkipReason, redisCli, redisPing, startRedis, startBenchRedis };
