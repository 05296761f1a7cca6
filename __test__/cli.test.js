// The `npm start` CLI (bin/realtime-events.js): demo token, clean shutdown, production guard, .env.
'use strict';

const { test, describe, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const h = require('./helpers');

const BIN = path.join(h.PKG, 'bin', 'realtime-events.js');

describe('realtime-events CLI', () => {
  const procs = [];
  const clients = [];
  const dirs = [];

  /** An empty temporary folder to run in (so that no stray .env is read). */
  function tempDir() {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'realtime-events-cli-'));
    dirs.push(dir);
    return dir;
  }

  /** The CLI with text lines (LOG_FORMAT=text unless `env` says), off a terminal as here. */
  function cli(env, cwd = tempDir()) {
    const p = h.spawnProcess(process.execPath, [BIN], { env: h.cleanEnv({ LOG_FORMAT: 'text', ...env }), cwd });
    procs.push(p);
    return p;
  }

  after(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await Promise.all(procs.map((p) => p.stop()));
    for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
  });

  test('without JWT_SECRET (development) it prints a working demo URL; SIGTERM closes clients with 1001 and exits 0', async () => {
    const port = await h.freePort();
    const p = cli({ REALTIME_PORT: port });
    const [, url] = await p.waitForOutput(/try it:\s+(ws:\/\/\S+)\n/, { ms: 10_000 });
    const parsed = new URL(url);
    assert.equal(parsed.protocol, 'ws:');
    assert.equal(parsed.port, String(port));
    assert.equal(parsed.pathname, '/ws');
    assert.ok(parsed.searchParams.get('token'), 'the URL carries a token');
    assert.match(p.out(), new RegExp(`listening on ws://localhost:${port}/ws \\(bus: memory\\)`));
    assert.match(p.out(), /JWT_SECRET is not set: using a random secret/);
    assert.doesNotMatch(p.out(), /type a parcel id/, 'stdin is not a terminal here: it is not read');

    const c = await h.connect(url);
    clients.push(c);
    assert.equal(await c.next(), h.WELCOME);
    // The Bearer token it prints works too.
    const [, bearer] = /token for Authorization: Bearer (\S+)\n/.exec(p.out());
    const c2 = await h.connectReady(`ws://127.0.0.1:${port}/ws`, { headers: { Authorization: `Bearer ${bearer}` } });
    clients.push(c2);
    // The random secret is not guessable: a token signed with anything else is refused.
    await h.expectRefusal(h.wsUrl(port), {}, 401, 'TOKEN_INVALID_SIGNATURE');

    p.child.kill('SIGTERM');
    assert.equal((await h.withTimeout(c.closed, 5000, 'close 1001')).code, 1001);
    assert.equal((await h.withTimeout(c2.closed, 5000, 'close 1001')).code, 1001);
    assert.deepEqual(await p.waitForExit(8000), { code: 0, signal: null }, p.err());
    assert.match(p.out(), /SIGTERM: closing/);
  });

  // A container whose command is `npm start` gets its SIGTERM on npm's pid alone: npm passes it
  // to the script's shell, and the server must be the one that receives it (and drains).
  test('SIGTERM to the `npm start` process alone reaches the server: clients get 1001, npm exits 0', async () => {
    const port = await h.freePort();
    const p = h.spawnProcess('npm', ['start'], {
      env: h.cleanEnv({ REALTIME_PORT: port, JWT_SECRET: 'npm-start-secret', REALTIME_DRAIN_MS: '200', LOG_FORMAT: 'text' }),
      group: true,
    });
    procs.push(p);
    await p.waitForOutput(/listening on /, { ms: 20_000 });
    const c = await h.connectReady(h.wsUrl(port, { token: h.sign({ sub: 'u' }, {}, 'npm-start-secret') }));
    clients.push(c);
    p.child.kill('SIGTERM'); // npm's pid only, not its process group
    assert.equal((await h.withTimeout(c.closed, 8000, 'close 1001 after SIGTERM to npm')).code, 1001);
    assert.deepEqual(await p.waitForExit(8000), { code: 0, signal: null }, p.err());
    assert.match(p.out(), /SIGTERM: closing/);
    assert.match(p.out(), /\] closed\n/);
    await assert.rejects(h.connect(h.wsUrl(port)), /ECONNREFUSED/, 'the port is free');
  });

  // Off a terminal (a container, systemd, a pipe) each stream carries one format: JSON lines,
  // the CLI's own lines as much as the engine's, so a log collector that merges them parses all.
  test('off a terminal every line on stdout and stderr is JSON; it hints at REALTIME_PUBLISH_STDIN=1', async () => {
    const port = await h.freePort();
    const p = cli({ REALTIME_PORT: port, JWT_SECRET: 'json-secret', LOG_FORMAT: undefined, LOG_LEVEL: 'info' });
    await p.waitForOutput(/"msg":"listening on /, { ms: 10_000 });
    await p.waitForOutput(/server: listening on/, { stream: 'stderr', ms: 10_000 });
    // A refusal and a client that goes away, so that the engine logs more than its start.
    await h.expectRefusal(h.wsUrl(port, { token: 'not-a-jwt' }), {}, 401, 'TOKEN_MALFORMED');
    p.child.kill('SIGTERM');
    assert.deepEqual(await p.waitForExit(8000), { code: 0, signal: null }, p.err());
    const lines = (text) => text.split('\n').filter((l) => l.trim() !== '');
    for (const [name, text] of [['stdout', p.out()], ['stderr', p.err()]]) {
      for (const line of lines(text)) {
        let record;
        assert.doesNotThrow(() => (record = JSON.parse(line)), `${name}: not JSON: ${line}`);
        assert.equal(typeof record.msg, 'string', line);
        assert.equal(typeof record.level, 'string', line);
      }
    }
    const msgs = lines(p.out()).map((l) => JSON.parse(l).msg);
    assert.ok(msgs.some((m) => /REALTIME_PUBLISH_STDIN=1/.test(m)), `a hint on how to publish: ${msgs.join(' | ')}`);
    assert.ok(msgs.includes('closed'), msgs.join(' | '));
    assert.ok(lines(p.err()).some((l) => JSON.parse(l).code === 'TOKEN_MALFORMED'), `the refusal is logged at info: ${p.err()}`);
  });

  test('REALTIME_PUBLISH_STDIN=1: each line on stdin publishes that parcel id; a bad one is reported, not fatal', async () => {
    const port = await h.freePort();
    // Without a terminal on stdin (as here) it is off unless asked for.
    const p = cli({ REALTIME_PORT: port, REALTIME_PUBLISH_STDIN: '1' });
    const [, url] = await p.waitForOutput(/try it:\s+(ws:\/\/\S+)\n/, { ms: 10_000 });
    const c = await h.connectReady(url);
    clients.push(c);
    p.write('x'.repeat(300));
    await p.waitForOutput(/could not publish "x+": .* \(ERR_INVALID_PARCEL_ID\)\n/);
    p.write('  parcel-typed  ');
    await p.waitForOutput(/published parcel-typed\n/);
    assert.equal(h.withoutOffset(await c.next()), h.frame('parcel-typed'));
    assert.match(p.out(), /type a parcel id and press Enter to publish it/);
    p.child.kill('SIGTERM');
    assert.deepEqual(await p.waitForExit(8000), { code: 0, signal: null }, p.err());
  });

  test('SIGINT closes clients with 1001 and exits 0', async () => {
    const port = await h.freePort();
    const p = cli({ REALTIME_PORT: port, JWT_SECRET: 'sigint-secret' });
    await p.waitForOutput(/listening on /, { ms: 10_000 });
    const c = await h.connectReady(h.wsUrl(port, { token: h.sign({ sub: 'u' }, {}, 'sigint-secret') }));
    clients.push(c);
    p.child.kill('SIGINT');
    assert.equal((await h.withTimeout(c.closed, 5000, 'close 1001')).code, 1001);
    assert.deepEqual(await p.waitForExit(8000), { code: 0, signal: null }, p.err());
    assert.match(p.out(), /SIGINT: closing/);
  });

  // Once it says "listening", a supervisor may stop it at any moment: the shutdown must be clean.
  // The signal is raised by a preload hook right when the line is printed (see fixtures/).
  for (const signal of ['SIGTERM', 'SIGINT']) {
    test(`${signal} arriving right as "listening on" is printed still shuts down cleanly (exit 0)`, async () => {
      const port = await h.freePort();
      const p = h.spawnProcess(process.execPath, ['-r', path.join(__dirname, 'fixtures', 'signal-on-listening.js'), BIN], {
        env: h.cleanEnv({ REALTIME_PORT: port, JWT_SECRET: 'early-signal', SIGNAL_ON_LISTENING: signal, LOG_FORMAT: 'text' }),
        cwd: tempDir(),
      });
      procs.push(p);
      assert.deepEqual(await p.waitForExit(8000), { code: 0, signal: null },
        `killed by the default ${signal} action instead of closing cleanly; stdout: ${p.out()}`);
      assert.match(p.out(), new RegExp(`${signal}: closing`));
      assert.match(p.out(), /\] closed\n/);
    });
  }

  test('NODE_ENV=production without JWT_SECRET exits non-zero with a message', async () => {
    const port = await h.freePort();
    const p = cli({ REALTIME_PORT: port, NODE_ENV: 'production' });
    const exit = await p.waitForExit(8000);
    assert.notEqual(exit.code, 0);
    assert.equal(exit.signal, null);
    assert.match(p.err(), /JWT_SECRET is not set; refusing to start in production/);
    assert.doesNotMatch(p.out(), /try it/);
    // It never listened.
    const probe = await h.freePort();
    assert.ok(probe > 0);
    await assert.rejects(h.connect(h.wsUrl(port)), /ECONNREFUSED/);
  });

  test('a port in use: exits non-zero with the error code', async () => {
    const port = await h.freePort();
    const first = cli({ REALTIME_PORT: port, JWT_SECRET: 'x' });
    await first.waitForOutput(/listening on /, { ms: 10_000 });
    const second = cli({ REALTIME_PORT: port, JWT_SECRET: 'x' });
    const exit = await second.waitForExit(8000);
    assert.equal(exit.code, 1);
    assert.match(second.err(), /could not start: .*\(ERR_PORT_IN_USE\)/);
    first.child.kill('SIGTERM');
    assert.equal((await first.waitForExit(8000)).code, 0);
  });

  test('a .env file in the working folder is honoured', async () => {
    const dir = tempDir();
    const port = await h.freePort();
    fs.writeFileSync(path.join(dir, '.env'), [
      '# settings for the realtime server',
      `REALTIME_PORT=${port}`,
      'JWT_SECRET="dotenv-secret"   ',
      'export LOG_LEVEL=warn',
      '',
    ].join('\n'));
    const p = cli({}, dir);
    await p.waitForOutput(/listening on /, { ms: 10_000 });
    assert.match(p.out(), /read REALTIME_PORT, JWT_SECRET, LOG_LEVEL from \.env/);
    assert.match(p.out(), new RegExp(`listening on ws://localhost:${port}/ws`));
    assert.doesNotMatch(p.out(), /try it/, 'no demo token when a secret is configured');
    const c = await h.connectReady(h.wsUrl(port, { token: h.sign({ sub: 'u' }, {}, 'dotenv-secret') }));
    clients.push(c);
    await h.expectRefusal(h.wsUrl(port, { token: h.sign({ sub: 'u' }, {}, '"dotenv-secret"') }), {}, 401, 'TOKEN_INVALID_SIGNATURE');
    p.child.kill('SIGTERM');
    assert.equal((await h.withTimeout(c.closed, 5000, 'close 1001')).code, 1001);
    assert.equal((await p.waitForExit(8000)).code, 0);
  });

  test('variables already set win over .env', async () => {
    const dir = tempDir();
    const dotenvPort = await h.freePort();
    const envPort = await h.freePort();
    fs.writeFileSync(path.join(dir, '.env'), `REALTIME_PORT=${dotenvPort}\nJWT_SECRET=from-dotenv\n`);
    const p = cli({ JWT_SECRET: 'from-env', REALTIME_PORT: envPort }, dir);
    await p.waitForOutput(/listening on /, { ms: 10_000 });
    assert.doesNotMatch(p.out(), /from \.env/, 'nothing was taken from .env');
    assert.match(p.out(), new RegExp(`listening on ws://localhost:${envPort}/ws`));
    const c = await h.connectReady(h.wsUrl(envPort, { token: h.sign({ sub: 'u' }, {}, 'from-env') }));
    clients.push(c);
    await h.expectRefusal(h.wsUrl(envPort, { token: h.sign({ sub: 'u' }, {}, 'from-dotenv') }), {}, 401, 'TOKEN_INVALID_SIGNATURE');
    p.child.kill('SIGTERM');
    assert.equal((await p.waitForExit(8000)).code, 0);
  });
});
