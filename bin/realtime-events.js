#!/usr/bin/env node
// `npm start` / `npx realtime-events`: runs the WebSocket server from the environment.
//
//   REALTIME_PORT (3006)  REALTIME_HOST (0.0.0.0)  JWT_SECRET  REDIS_URL  REDIS_CHANNEL
//   REDIS_REQUIRED  REALTIME_DRAIN_MS (5000 here)  REALTIME_DASHBOARD  LOG_LEVEL  LOG_FORMAT
//   NODE_ENV
//
// Run in the foreground of a terminal (not in production), each line typed publishes that parcel
// id, to try it out; REALTIME_PUBLISH_STDIN=1 or 0 forces it on or off.
//
// SIGTERM or SIGINT drains: /health turns 503, clients are moved away with 1001 spread over
// REALTIME_DRAIN_MS, then the process exits 0. A second signal exits at once.
//
// A `.env` file in the current folder is read first; variables already set win over it.
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');

/**
 * One format per stream, the engine's rule: JSON lines off a terminal (as the engine's records on
 * stderr), text on one; LOG_FORMAT=json|text forces either. Read when called, after .env.
 */
function jsonOn(stream) {
  const v = String(process.env.LOG_FORMAT ?? '').trim().toLowerCase();
  if (v === 'json') return true;
  if (v === 'text' || v === 'pretty') return false;
  return !stream.isTTY;
}

/** One line of this CLI: `info` on stdout, `error` on stderr, in the stream's format. */
function say(msg, level = 'info') {
  const [stream, write] = level === 'error' ? [process.stderr, console.error] : [process.stdout, console.log];
  write(jsonOn(stream) ? JSON.stringify({ time: new Date().toISOString(), level, module: 'cli', msg }) : `[realtime-events] ${msg}`);
}

/** Minimal .env reader: KEY=VALUE lines, # comments, optional quotes; never overrides. */
function loadDotEnv(file) {
  let text;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return [];
  }
  const loaded = [];
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const m = /^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$/.exec(line);
    if (!m) continue;
    let value = m[2];
    const quoted = /^(['"])([\s\S]*)\1$/.exec(value);
    if (quoted) value = quoted[2];
    else value = value.replace(/\s+#.*$/, '').trim();
    if (process.env[m[1]] === undefined) {
      process.env[m[1]] = value;
      loaded.push(m[1]);
    }
  }
  return loaded;
}

function base64url(input) {
  return Buffer.from(input).toString('base64url');
}

/** An HS256 JWT, signed the way npm jsonwebtoken signs it. */
function signDemoToken(secret) {
  const now = Math.floor(Date.now() / 1000);
  const header = base64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const payload = base64url(JSON.stringify({ sub: 'demo-user', iat: now, exp: now + 24 * 3600 }));
  const signature = crypto.createHmac('sha256', secret).update(`${header}.${payload}`).digest('base64url');
  return `${header}.${payload}.${signature}`;
}

/** The drain window for a signal: REALTIME_DRAIN_MS, else 5 s. */
function drainMs() {
  const v = (process.env.REALTIME_DRAIN_MS ?? '').trim();
  return /^\d+$/.test(v) ? Number(v) : 5000;
}

async function main() {
  // Signals are handled from the first instant: one that arrives while the server is still
  // starting closes it as soon as it listens (no orphaned listener, exit code 0).
  let server = null;
  let stopping = null;
  const stop = async (signal) => {
    if (stopping) {
      if (server) {
        say(`${signal} again: exiting without waiting for the drain`);
        process.exit(1);
      }
      return;
    }
    stopping = signal;
    if (!server) return; // start() below notices `stopping` and closes at once
    const ms = drainMs();
    const n = server.clientCount;
    say(`${signal}: closing (draining ${n} client${n === 1 ? '' : 's'} over up to ${ms} ms; clients get 1001)`);
    await server.close({ drainMs: ms });
    say('closed');
    process.exit(0);
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));

  const loaded = loadDotEnv(path.resolve(process.cwd(), '.env'));
  const rt = require('..');
  const log = say;
  if (loaded.length) log(`read ${loaded.join(', ')} from .env`);

  let demoSecret = null;
  if (!process.env.JWT_SECRET) {
    if (process.env.NODE_ENV === 'production') {
      say('JWT_SECRET is not set; refusing to start in production (NODE_ENV=production). Set it in the environment, or in a .env file in the folder you start from (JWT_SECRET=<the Auth module\'s secret>).', 'error');
      process.exit(1);
    }
    demoSecret = crypto.randomBytes(32).toString('hex');
    process.env.JWT_SECRET = demoSecret;
  }

  server = await rt.startServer();
  if (stopping) {
    const signal = stopping;
    stopping = null;
    return stop(signal);
  }
  const host = process.env.REALTIME_HOST && process.env.REALTIME_HOST !== '0.0.0.0' ? process.env.REALTIME_HOST : 'localhost';
  const url = `ws://${host}:${server.port}/ws`;
  const base = `http://${host}:${server.port}/`;
  log(`listening on ${url} (bus: ${server.busMode})`);
  log(`health: ${base}health  metrics: ${base}metrics`);
  const dashboardOn = !['0', 'false', 'no', 'off'].includes(String(process.env.REALTIME_DASHBOARD ?? '').trim().toLowerCase());
  if (demoSecret) {
    const token = signDemoToken(demoSecret);
    log('JWT_SECRET is not set: using a random secret for this run (development only).');
    log(`try it:  ${url}?token=${token}`);
    log(`token for Authorization: Bearer ${token}`);
    if (dashboardOn) log(`dashboard (live feed connected): ${base}#token=${token}`);
  } else if (dashboardOn) {
    log(`dashboard: ${base}`);
  }
  if (publishesStdin()) publishTypedLines(rt, log);
  else if (!process.env.REALTIME_PUBLISH_STDIN && process.env.NODE_ENV !== 'production') log('to publish by typing parcel ids on stdin here, start with REALTIME_PUBLISH_STDIN=1');
}

/**
 * Whether lines typed on stdin are published: `REALTIME_PUBLISH_STDIN=1` or `0` decides; else
 * only outside production, when stdin is a terminal and this process is in its foreground (a
 * background job that reads its terminal is stopped by the shell; nohup and process managers
 * give no terminal).
 */
function publishesStdin() {
  const forced = (process.env.REALTIME_PUBLISH_STDIN ?? '').trim();
  if (forced) return !['0', 'false', 'no', 'off'].includes(forced.toLowerCase());
  return process.env.NODE_ENV !== 'production' && Boolean(process.stdin.isTTY) && inForeground();
}

/** Whether this process is in its terminal's foreground process group (Linux; elsewhere: yes). */
function inForeground() {
  try {
    const stat = fs.readFileSync('/proc/self/stat', 'utf8');
    // Fields after the command name (which may hold spaces): pgrp is field 5, tpgid field 8.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return rest[2] === rest[5];
  } catch {
    return true;
  }
}

/**
 * Every line on stdin is a parcel id to publish, so a newcomer can watch an event reach a client
 * without writing a publisher (the in-memory bus serves this process only). `terminal: false`
 * leaves the terminal as it is, so Ctrl-C still raises SIGINT. A stdin that cannot be read ends
 * this, never the server.
 */
function publishTypedLines(rt, log) {
  const readline = require('node:readline');
  const rl = readline.createInterface({ input: process.stdin, terminal: false });
  rl.on('error', () => rl.close());
  process.stdin.on('error', () => rl.close());
  rl.on('line', (line) => {
    const id = line.trim();
    if (!id) return;
    rt.publishParcelUpdate(id).then(
      () => log(`published ${id}`),
      (err) => log(`could not publish ${JSON.stringify(id)}: ${err.message} (${err.code})`),
    );
  });
  log('type a parcel id and press Enter to publish it to every client');
}

main().catch((err) => {
  say(`could not start: ${err.message}${err.code ? ` (${err.code})` : ''}`, 'error');
  process.exit(1);
});
