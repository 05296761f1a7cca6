#!/usr/bin/env node
// The near-limit reference (bench/reference, Rust) behind the same control protocol as the other
// servers (bench/lib/control.js): this Node process starts the binary and publishes by writing
// one parcel id per line to its stdin, i.e. "published to over a pipe". A publish returns nothing
// to await (the pipe write is the whole call). Note: `stats` reports this wrapper's own RSS and
// CPU, not the binary's; run.js therefore leaves the reference out of memory and scale.
//
//   node bench/server-reference.js [--port 0] [--host 127.0.0.1] --bin target/release/reference
'use strict';

const { spawn } = require('node:child_process');
const path = require('node:path');
const readline = require('node:readline');
const { serve, parseArgs } = require('./lib/control');

const args = parseArgs(process.argv.slice(2));
const bin = typeof args.bin === 'string' ? args.bin : path.join(__dirname, '..', 'target', 'release', 'reference');
const child = spawn(bin, ['--port', String(args.port ?? 0), '--host', String(args.host ?? '127.0.0.1')], { stdio: ['pipe', 'pipe', 'inherit'] });
child.on('exit', (code, signal) => {
  console.error(`reference exited (code ${code}, signal ${signal})`);
  process.exit(1);
});
readline.createInterface({ input: child.stdout }).once('line', (line) => {
  const { port } = JSON.parse(line);
  serve({
    publishOne: (id) => {
      child.stdin.write(`${id}\n`);
    },
    clientCount: () => null,
    close: async () => {
      child.removeAllListeners('exit');
      child.stdin.end();
      await new Promise((resolve) => {
        const t = setTimeout(() => (child.kill('SIGKILL'), resolve()), 2000);
        child.once('exit', () => (clearTimeout(t), resolve()));
      });
    },
    hello: { impl: 'reference', role: 'server', port, binary_pid: child.pid },
  });
});
