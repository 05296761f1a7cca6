// The README's commands and names exist (issue 14.8): every `npm run` script, npm command, env
// variable and startServer option it mentions; the way to run the server from the marketplace
// folder; what the installed npm's allowScripts warning says.
'use strict';

const { test, describe } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');

const rt = require('..');
const h = require('./helpers');

const README = fs.readFileSync(path.join(h.PKG, 'README.md'), 'utf8');
const PKG_JSON = JSON.parse(fs.readFileSync(path.join(h.PKG, 'package.json'), 'utf8'));

/** Every file of the package whose text may read an env variable. */
function sources() {
  const files = ['index.js', 'client.js', 'bin/realtime-events.js', 'scripts/build.js', '.ci/run'];
  for (const dir of ['src', 'src/bus', '__test__', 'bench']) {
    for (const f of fs.readdirSync(path.join(h.PKG, dir))) {
      if (/\.(rs|js)$/.test(f)) files.push(path.join(dir, f));
    }
  }
  return files.filter((f) => fs.existsSync(path.join(h.PKG, f)))
    .map((f) => fs.readFileSync(path.join(h.PKG, f), 'utf8')).join('\n');
}

describe('README', () => {
  test('every `npm run X`, `npm start` and `npm test` names a script of package.json', () => {
    const runs = [...README.matchAll(/npm run ([\w:-]+)/g)].map((m) => m[1]);
    assert.ok(runs.length >= 3, `found ${runs}`);
    for (const name of new Set([...runs, 'start', 'test'])) {
      assert.ok(PKG_JSON.scripts[name], `README mentions npm script "${name}", package.json has none`);
    }
  });

  test('every npm command it recommends exists in the installed npm', () => {
    const commands = new Set([...README.matchAll(/`npm (approve-scripts|install-scripts \w+)\b/g)].map((m) => m[1]));
    assert.ok(commands.has('install-scripts approve'), `found ${[...commands]}`);
    for (const command of commands) {
      const r = spawnSync('npm', [...command.split(' '), '--help'], { encoding: 'utf8' });
      assert.equal(r.status, 0, `npm ${command} --help: ${r.stderr}`);
    }
  });

  test('the allowScripts warning it quotes is what the installed npm prints', () => {
    const npmDir = path.join(path.dirname(fs.realpathSync(spawnSync('which', ['npm'], { encoding: 'utf8' }).stdout.trim())), '..');
    const quoted = 'Run `npm install-scripts ls` to review, or `npm install-scripts approve <pkg>`';
    assert.ok(README.replace(/\s+/g, ' ').includes(quoted), 'the README quotes the remediation line');
    const file = path.join(npmDir, 'lib', 'utils', 'reify-output.js');
    if (!fs.existsSync(file)) return; // another npm layout: nothing to compare with
    const text = fs.readFileSync(file, 'utf8').replace(/'\s*\+\s*'/g, '');
    assert.ok(text.includes(quoted), `npm ${spawnSync('npm', ['--version'], { encoding: 'utf8' }).stdout.trim()} says otherwise`);
  });

  test('from the marketplace folder: `npx realtime-events` and node node_modules/realtime-events/bin/... exist', () => {
    assert.match(README, /npx realtime-events/);
    assert.equal(PKG_JSON.bin['realtime-events'], 'bin/realtime-events.js');
    const m = /node\s+node_modules\/realtime-events\/(bin\/[\w.-]+)/.exec(README);
    assert.ok(m, 'the README names the bin file');
    assert.ok(fs.existsSync(path.join(h.PKG, m[1])), m[1]);
    assert.ok(PKG_JSON.files.some((f) => m[1].startsWith(f)), 'the bin file is published');
  });

  test('it says the server speaks ws:// only and how to put TLS in front; and how to publish from stdin off a terminal', () => {
    assert.match(README, /plain `ws:\/\/`[^.]*never\s+TLS/);
    assert.match(README, /proxy_set_header Upgrade/);
    assert.match(README, /off a terminal[\s\S]{0,120}`REALTIME_PUBLISH_STDIN=1`/);
  });

  test('its Node client example reads a refusal\'s code from the body', () => {
    const node = README.slice(README.indexOf('### Node'), README.indexOf('### Browser'));
    assert.match(node, /unexpected-response[\s\S]*JSON\.parse\(body\)\.code/);
  });

  test('every env variable it mentions is read somewhere in the package', () => {
    const text = sources();
    const names = new Set([...README.matchAll(/\b((?:REALTIME|REDIS|JWT|LOG|REQUIRE|UPDATE|CHROMIUM|NODE)_[A-Z0-9_]+)\b/g)].map((m) => m[1]));
    assert.ok(names.size >= 20, `found ${[...names]}`);
    for (const name of names) assert.ok(text.includes(name), `README mentions ${name}; no source reads it`);
  });

  test('every option of its configuration table is a startServer option', async () => {
    const table = README.slice(README.indexOf('## Configuration'), README.indexOf('## JS API'));
    const options = [...table.matchAll(/^\| `(\w+)` \|/gm)].map((m) => m[1]);
    assert.ok(options.length >= 20, `found ${options}`);
    for (const option of options) {
      // A known option with no value passes the name check and stops at the next check (an
      // invalid port or host); an unknown one is refused by name.
      const probe = option === 'port' ? { host: '' } : { port: -1 };
      await assert.rejects(rt.startServer({ ...probe, [option]: undefined }), (err) => {
        assert.doesNotMatch(err.message, /unknown option/, `${option}: ${err.message}`);
        return true;
      });
    }
  });
});
