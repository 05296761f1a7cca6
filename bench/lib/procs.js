// Child processes that speak one JSON object per stdout line, plus small process helpers.
'use strict';

const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const readline = require('node:readline');

let verbose = false;
function setVerbose(v) {
  verbose = v;
}

class Child {
  constructor(name, command, args, options = {}) {
    this.name = name;
    this.lines = [];
    this.waiters = [];
    this.stderrTail = [];
    this.exit = null;
    this.proc = spawn(command, args, {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: options.env ?? process.env,
      cwd: options.cwd,
    });
    this.pid = this.proc.pid;
    readline.createInterface({ input: this.proc.stdout }).on('line', (line) => this.#onLine(line));
    readline.createInterface({ input: this.proc.stderr }).on('line', (line) => {
      this.stderrTail.push(line);
      if (this.stderrTail.length > 40) this.stderrTail.shift();
      if (verbose) process.stderr.write(`  [${this.name}] ${line}\n`);
    });
    this.proc.stdin.on('error', () => {});
    this.proc.on('exit', (code, signal) => {
      this.exit = { code, signal };
      const err = new Error(
        `${this.name} exited (code ${code}, signal ${signal})` +
          (this.stderrTail.length ? `; stderr:\n    ${this.stderrTail.slice(-15).join('\n    ')}` : ''),
      );
      for (const w of this.waiters.splice(0)) w.reject(err);
    });
  }

  #onLine(line) {
    let obj;
    try {
      obj = JSON.parse(line);
    } catch {
      if (verbose) process.stderr.write(`  [${this.name}] ${line}\n`);
      return;
    }
    if (verbose) process.stderr.write(`  [${this.name}] ${line.slice(0, 300)}\n`);
    const w = this.waiters.shift();
    if (w) w.resolve(obj);
    else this.lines.push(obj);
  }

  /** The next JSON line, within `timeoutMs`. */
  next(timeoutMs = 60_000) {
    if (this.lines.length) return Promise.resolve(this.lines.shift());
    if (this.exit) return Promise.reject(new Error(`${this.name} has exited (${JSON.stringify(this.exit)}); stderr:\n    ${this.stderrTail.slice(-15).join('\n    ')}`));
    return new Promise((resolve, reject) => {
      const w = { resolve, reject };
      const timer = setTimeout(() => {
        const i = this.waiters.indexOf(w);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(new Error(`${this.name}: no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      w.resolve = (v) => {
        clearTimeout(timer);
        resolve(v);
      };
      w.reject = (e) => {
        clearTimeout(timer);
        reject(e);
      };
      this.waiters.push(w);
    });
  }

  /** Sends one command line (a string, or an object sent as JSON) and returns the answer. */
  async request(command, timeoutMs = 60_000) {
    const line = typeof command === 'string' ? command : JSON.stringify(command);
    if (verbose) process.stderr.write(`  [${this.name}] << ${line}\n`);
    this.proc.stdin.write(`${line}\n`);
    const answer = await this.next(timeoutMs);
    if (answer.event === 'error') throw new Error(`${this.name}: ${answer.message}`);
    return answer;
  }

  /** CPU seconds (user + system) so far, from /proc. */
  cpuSeconds() {
    return cpuSecondsOf(this.pid);
  }

  rssBytes() {
    try {
      const status = fs.readFileSync(`/proc/${this.pid}/status`, 'utf8');
      const m = /VmRSS:\s+(\d+) kB/.exec(status);
      return m ? Number(m[1]) * 1024 : null;
    } catch {
      return null;
    }
  }

  /** Asks it to quit, then kills it (this process only) if it lingers. */
  async stop(quitCommand, graceMs = 5000) {
    if (this.exit) return;
    const exited = new Promise((resolve) => this.proc.once('exit', resolve));
    try {
      if (quitCommand) this.proc.stdin.write(`${quitCommand}\n`);
      else this.proc.kill('SIGTERM');
      this.proc.stdin.end();
    } catch {
      // already gone
    }
    const timer = setTimeout(() => {
      try {
        this.proc.kill('SIGKILL');
      } catch {
        // gone
      }
    }, graceMs);
    await exited;
    clearTimeout(timer);
  }
}

const CLK_TCK = (() => {
  const r = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' });
  return Number(r.stdout) || 100;
})();

function cpuSecondsOf(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // fields[11] = utime, fields[12] = stime (fields 14 and 15 of stat(5)).
    return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
  } catch {
    return null;
  }
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

module.exports = { Child, cpuSecondsOf, freePort, sleep, setVerbose };
