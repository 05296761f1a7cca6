#!/usr/bin/env node
// Compiles the Rust addon and copies it to ./realtime_events.node.
//
// Runs as the package's `install` script, so it must work where npm installs a linked folder
// (`npm install ../realtime-events`): there devDependencies such as @napi-rs/cli are absent,
// so this uses nothing but Node and cargo. `--debug` builds without optimisations.
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const debug = process.argv.includes('--debug');
const profile = debug ? 'debug' : 'release';

function fail(message) {
  console.error(`\nrealtime-events: ${message}\n`);
  process.exit(1);
}

const probe = spawnSync('cargo', ['--version'], { encoding: 'utf8' });
if (probe.error || probe.status !== 0) {
  fail(
    'building the native addon needs the Rust toolchain (cargo), which was not found on PATH.\n' +
      'Install it with rustup (see https://rustup.rs), open a new shell, and run `npm install` again.',
  );
}

const args = ['build', '--lib', '--features', 'node'];
if (!debug) args.push('--release');
const built = spawnSync('cargo', args, { cwd: root, stdio: 'inherit' });
if (built.error || built.status !== 0) fail(`cargo ${args.join(' ')} failed (see above).`);

const targetDir = process.env.CARGO_TARGET_DIR
  ? path.resolve(root, process.env.CARGO_TARGET_DIR)
  : path.join(root, 'target');
const file = {
  darwin: 'librealtime_events.dylib',
  win32: 'realtime_events.dll',
}[process.platform] || 'librealtime_events.so';
const from = path.join(targetDir, profile, file);
if (!fs.existsSync(from)) fail(`cargo succeeded but ${from} is missing.`);

// Copy then rename: a process that has the old addon loaded keeps a valid mapping.
const to = path.join(root, 'realtime_events.node');
const tmp = `${to}.${process.pid}.tmp`;
fs.copyFileSync(from, tmp);
fs.renameSync(tmp, to);
console.error(`realtime-events: built ${path.relative(process.cwd(), to) || to} (${profile})`);
