// Child processes with their output captured: what the tests and the benchmark spawn (servers,
// load generators, redis-server, npm). One wrapper, two ways to talk to it:
// - as text: `out()`, `err()`, `waitForOutput(regex)`, `write(line)` (the tests);
// - as one JSON object per stdout line: `next()`, `request(command)` (the benchmark).
// Every child still running when this process exits is killed.
'use strict';

const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const { DEFAULT_TIMEOUT, withTimeout, whenNotified } = require('./wait');

let verbose = false;
/** Echo every child's output to stderr, prefixed with its name. */
function setVerbose(v) {
  verbose = v;
}

const running = new Set();
process.on('exit', () => {
  for (const child of running) {
    try {
      child.kill('SIGKILL');
    } catch {}
  }
});

/** Output kept per stream; beyond it the oldest half is dropped. */
const KEEP_CHARS = 8 << 20;

class Child {
  /**
   * Spawns `command args`. `group: true` makes it lead a process group of its own, which stop()
   * and the exit cleanup kill whole (for a child that spawns others, such as npm);
   * `child.kill()` still signals the child alone.
   */
  constructor(name, command, args, { env = process.env, cwd, group = false } = {}) {
    this.name = name;
    /** JSON lines not yet taken by next(). */
    this.lines = [];
    this.waiters = [];
    /** The last 40 lines of stderr. */
    this.stderrTail = [];
    /** `{code, signal}` once the process has exited (its pipes may still be open). */
    this.exit = null;
    this.groupLeader = group;
    this.proc = spawn(command, args, { env, cwd, stdio: ['pipe', 'pipe', 'pipe'], detached: group });
    this.pid = this.proc.pid;
    this.stdout = '';
    this.stderr = '';
    this.textWaiters = new Set();
    running.add(this);
    this.lineReader('stdout', (line) => this.onLine(line));
    this.lineReader('stderr', (line) => {
      this.stderrTail.push(line);
      if (this.stderrTail.length > 40) this.stderrTail.shift();
      if (verbose) process.stderr.write(`  [${this.name}] ${line}\n`);
    });
    this.proc.stdin.on('error', () => {});
    this.proc.on('error', (err) => {
      this.stderr += `\n[spawn error] ${err.message}`;
    });
    this.proc.on('exit', (code, signal) => {
      this.exit = { code, signal };
      const err = new Error(
        `${this.name} exited (code ${code}, signal ${signal})` +
          (this.stderrTail.length ? `; stderr:\n    ${this.stderrTail.slice(-15).join('\n    ')}` : ''),
      );
      for (const w of this.waiters.splice(0)) w.reject(err);
    });
    /** `{code, signal}` once the process has exited and its output is all read. */
    this.exitInfo = null;
    this.exited = new Promise((resolve) => {
      this.proc.on('close', (code, signal) => {
        running.delete(this);
        this.exitInfo = { code, signal };
        resolve(this.exitInfo);
        this.notify();
      });
    });
  }

  /** The ChildProcess. */
  get child() {
    return this.proc;
  }

  /** Captures `stream` as text and calls `onLine` for each complete line. */
  lineReader(stream, onLine) {
    let partial = '';
    this.proc[stream].on('data', (d) => {
      const text = d.toString('utf8');
      this[stream] += text;
      if (this[stream].length > KEEP_CHARS) this[stream] = this[stream].slice(-KEEP_CHARS / 2);
      const lines = (partial + text).split('\n');
      partial = lines.pop();
      for (const line of lines) onLine(line);
      this.notify();
    });
    this.proc[stream].on('end', () => {
      if (partial) onLine(partial);
    });
  }

  onLine(line) {
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

  notify() {
    for (const w of [...this.textWaiters]) w();
  }

  out() {
    return this.stdout;
  }

  err() {
    return this.stderr;
  }

  /** Resolves with the regex match once stdout (or `stream`) matches; fails loudly. */
  waitForOutput(regex, { stream = 'stdout', ms = DEFAULT_TIMEOUT } = {}) {
    const output = () => `stdout: ${this.stdout}\nstderr: ${this.stderr}`;
    return whenNotified(this.textWaiters, () => {
      const m = regex.exec(stream === 'stdout' ? this.stdout : this.stderr);
      if (m) return m;
      if (this.exitInfo) {
        throw new Error(`process exited (${JSON.stringify(this.exitInfo)}) before ${stream} matched ${regex}\n${output()}`);
      }
      return undefined;
    }, ms, () => `timed out after ${ms} ms waiting for ${stream} to match ${regex}\n${output()}`);
  }

  /** Waits for the exit; fails loudly (and kills) after `ms`. */
  async waitForExit(ms = DEFAULT_TIMEOUT) {
    try {
      return await withTimeout(this.exited, ms, `process ${this.pid} to exit by itself`);
    } catch (err) {
      this.kill('SIGKILL');
      throw new Error(`${err.message}\nstdout: ${this.stdout}\nstderr: ${this.stderr}`);
    }
  }

  /** Writes one line to its stdin. */
  write(line) {
    this.proc.stdin.write(`${line}\n`);
  }

  /** The next JSON line of stdout, within `timeoutMs`. */
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

  /** Sends one command line (a string, or an object sent as JSON) and returns the JSON answer. */
  async request(command, timeoutMs = 60_000) {
    const line = typeof command === 'string' ? command : JSON.stringify(command);
    if (verbose) process.stderr.write(`  [${this.name}] << ${line}\n`);
    this.write(line);
    const answer = await this.next(timeoutMs);
    if (answer.event === 'error') throw new Error(`${this.name}: ${answer.message}`);
    return answer;
  }

  /** Signals the child, or its whole process group when it was spawned with `group: true`. */
  kill(signal) {
    if (this.groupLeader) {
      try {
        process.kill(-this.pid, signal);
        return;
      } catch {}
    }
    this.proc.kill(signal);
  }

  /**
   * Stops it and waits for the exit; resolves with `{code, signal}`.
   * - `stop()`, `stop('SIGTERM')`: sends the signal (SIGKILL by default) and waits.
   * - `stop(command, graceMs)`: writes `command` to its stdin and closes stdin; `stop(null,
   *   graceMs)` sends SIGTERM instead; either way SIGKILL follows after `graceMs` (5000).
   */
  async stop(how = 'SIGKILL', graceMs = 5000) {
    if (typeof how === 'string' && how.startsWith('SIG')) {
      // Waits for the output too (the pipes' close), as a test reads it afterwards.
      if (!this.exitInfo) {
        this.kill(how);
        await this.exited;
      }
      return this.exitInfo;
    }
    if (this.exit) return this.exit;
    const exited = new Promise((resolve) => this.proc.once('exit', resolve));
    try {
      if (how) this.proc.stdin.write(`${how}\n`);
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
    return this.exit;
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
}

/** `new Child(...)` named after its command. */
function spawnProcess(command, args, options) {
  return new Child(path.basename(command), command, args, options);
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

module.exports = { Child, spawnProcess, cpuSecondsOf, setVerbose };
