// `npm install ../realtime-events` from another package of a monorepo builds the addon (the
// package's install script: only node + cargo, no @napi-rs/cli) and `require('realtime-events')`
// then works there.
'use strict';

const { test } = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const { PKG, connectReady, cleanEnv, sign, SECRET, spawnNodeScript } = require('./helpers');

test('npm install <path> from a sibling package builds it; require() and import work there', { timeout: 600_000 }, async (t) => {
  const mono = fs.mkdtempSync(path.join(os.tmpdir(), 'rt-monorepo-'));
  t.after(() => fs.rmSync(mono, { recursive: true, force: true }));
  const api = path.join(mono, 'api');
  fs.mkdirSync(api);
  fs.writeFileSync(path.join(api, 'package.json'), JSON.stringify({ name: 'api', version: '1.0.0', private: true }));

  const install = spawnSync('npm', ['install', PKG, '--no-audit', '--no-fund', '--foreground-scripts'], {
    cwd: api,
    encoding: 'utf8',
    env: cleanEnv(),
  });
  assert.equal(install.status, 0, `npm install failed:\n${install.stdout}\n${install.stderr}`);
  // The install script ran (it prints this line even when cargo has nothing to rebuild).
  assert.match(install.stdout + install.stderr, /realtime-events: built .*realtime_events\.node/);
  const linked = fs.realpathSync(path.join(api, 'node_modules', 'realtime-events'));
  assert.equal(linked, fs.realpathSync(PKG));

  // A marketplace process in that package: require by name, start, serve a real client.
  const child = spawnNodeScript(
    `const rt = require('realtime-events');
     rt.startServer({ port: 0, host: '127.0.0.1', jwtSecret: ${JSON.stringify(SECRET)} })
       .then((s) => console.log('PORT ' + s.port));`,
    { cwd: api, env: cleanEnv() },
  );
  t.after(() => child.stop());
  const [, port] = await child.waitForOutput(/PORT (\d+)/, { ms: 20_000 });
  const client = await connectReady(`ws://127.0.0.1:${port}/ws?token=${encodeURIComponent(sign())}`);
  client.close();

  // The same from an ES module: every export of the package and of its client by name.
  const esm = spawnSync(process.execPath, ['--input-type=module', '-e', `
    import { createRequire } from 'node:module';
    import * as rt from 'realtime-events';
    import * as client from 'realtime-events/client';
    import { startServer, DEFAULT_PORT } from 'realtime-events';
    import { RealtimeClient } from 'realtime-events/client';
    const require = createRequire(process.cwd() + '/');
    const missing = (ns, cjs) => Object.keys(cjs).filter((k) => ns[k] !== cjs[k]);
    console.log(JSON.stringify({
      rt: missing(rt, require('realtime-events')),
      client: missing(client, require('realtime-events/client')),
      named: [typeof startServer, DEFAULT_PORT, typeof RealtimeClient],
    }));
  `], { cwd: api, encoding: 'utf8', env: cleanEnv() });
  assert.equal(esm.status, 0, esm.stderr);
  assert.deepEqual(JSON.parse(esm.stdout), { rt: [], client: [], named: ['function', 3006, 'function'] });
});
