// A strict parser for the Prometheus text exposition format 0.0.4, for the tests: it throws on
// anything a Prometheus server would reject or that the format's rules forbid, so that a test
// that parses /metrics proves the output is valid, not just that it contains some strings.
//
// Checked: line grammar (HELP, TYPE, comments, samples), metric and label names, label value
// escapes (\\ \" \n only), numbers (+Inf, -Inf, NaN), one HELP and one TYPE per family, TYPE
// before the family's samples, families not interleaved, no duplicate series, counters
// non-negative, histograms (_bucket with `le`, ascending bounds, cumulative counts that never
// decrease, a +Inf bucket equal to _count, a _sum), and a final newline.
'use strict';

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const TYPES = new Set(['counter', 'gauge', 'histogram', 'summary', 'untyped']);

class ParseError extends Error {
  constructor(lineNo, message, line) {
    super(`metrics line ${lineNo}: ${message}${line === undefined ? '' : `: ${JSON.stringify(line)}`}`);
  }
}

function parseNumber(text) {
  if (text === '+Inf' || text === 'Inf') return Infinity;
  if (text === '-Inf') return -Infinity;
  if (text === 'NaN') return NaN;
  if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(text)) return undefined;
  return Number(text);
}

/** Parses `{a="x",b="y"}` starting at `i` (at the `{`); returns [labels, nextIndex]. */
function parseLabels(line, i, lineNo) {
  const labels = {};
  i++; // {
  for (;;) {
    if (line[i] === '}') return [labels, i + 1];
    const nameMatch = /^[a-zA-Z_][a-zA-Z0-9_]*/.exec(line.slice(i));
    if (!nameMatch) throw new ParseError(lineNo, `bad label name at column ${i + 1}`, line);
    const name = nameMatch[0];
    if (name.startsWith('__')) throw new ParseError(lineNo, `reserved label name ${name}`, line);
    if (Object.hasOwn(labels, name)) throw new ParseError(lineNo, `duplicate label ${name}`, line);
    i += name.length;
    if (line[i] !== '=' || line[i + 1] !== '"') throw new ParseError(lineNo, `expected ="…" after label ${name}`, line);
    i += 2;
    let value = '';
    for (;;) {
      const c = line[i];
      if (c === undefined) throw new ParseError(lineNo, 'unterminated label value', line);
      if (c === '"') break;
      if (c === '\\') {
        const e = line[i + 1];
        if (e === '\\') value += '\\';
        else if (e === '"') value += '"';
        else if (e === 'n') value += '\n';
        else throw new ParseError(lineNo, `invalid escape \\${e} in label value`, line);
        i += 2;
      } else {
        value += c;
        i++;
      }
    }
    i++; // closing quote
    labels[name] = value;
    if (line[i] === ',') {
      i++;
      continue;
    }
    if (line[i] !== '}') throw new ParseError(lineNo, `expected , or } after label ${name}`, line);
  }
}

/** The family a sample name belongs to, given the declared types. */
function familyOf(name, types) {
  for (const suffix of ['_bucket', '_sum', '_count']) {
    if (name.endsWith(suffix)) {
      const base = name.slice(0, -suffix.length);
      if (types.get(base) === 'histogram' || (suffix !== '_bucket' && types.get(base) === 'summary')) return base;
    }
  }
  return name;
}

/**
 * Parses `text`; returns Map(familyName → {name, help, type, samples: [{name, labels, value}]}).
 * Throws a ParseError describing the first violation.
 */
function parse(text) {
  if (typeof text !== 'string') throw new TypeError('text must be a string');
  if (text.length > 0 && !text.endsWith('\n')) throw new ParseError(0, 'the exposition must end with a newline');
  const families = new Map();
  const types = new Map();
  const seenSeries = new Set();
  const closed = new Set(); // families whose samples ended (another family started)
  let current = null;
  const family = (name) => {
    if (!families.has(name)) families.set(name, { name, help: undefined, type: undefined, samples: [] });
    return families.get(name);
  };
  const lines = text.split('\n');
  lines.pop(); // after the final newline
  lines.forEach((line, idx) => {
    const lineNo = idx + 1;
    if (line === '') throw new ParseError(lineNo, 'empty line');
    if (line.startsWith('#')) {
      const m = /^# (HELP|TYPE) (\S+)(?: (.*))?$/.exec(line);
      if (!m) {
        if (/^#\s*(HELP|TYPE)\b/.test(line)) throw new ParseError(lineNo, 'malformed HELP/TYPE line', line);
        return; // a plain comment
      }
      const [, kind, name, rest = ''] = m;
      if (!METRIC_NAME.test(name)) throw new ParseError(lineNo, `bad metric name ${name}`, line);
      const f = family(name);
      if (closed.has(name) || (f.samples.length > 0)) throw new ParseError(lineNo, `${kind} for ${name} after its samples`, line);
      if (kind === 'HELP') {
        if (f.help !== undefined) throw new ParseError(lineNo, `second HELP for ${name}`, line);
        if (/\\[^\\n]/.test(rest.replace(/\\\\/g, ''))) throw new ParseError(lineNo, 'invalid escape in HELP', line);
        f.help = rest.replace(/\\n/g, '\n').replace(/\\\\/g, '\\');
      } else {
        if (f.type !== undefined) throw new ParseError(lineNo, `second TYPE for ${name}`, line);
        if (!TYPES.has(rest)) throw new ParseError(lineNo, `unknown type ${rest}`, line);
        f.type = rest;
        types.set(name, rest);
      }
      if (current !== null && current !== name) closed.add(current);
      current = name;
      return;
    }
    const nameMatch = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line);
    if (!nameMatch) throw new ParseError(lineNo, 'bad metric name', line);
    const name = nameMatch[0];
    let i = name.length;
    let labels = {};
    if (line[i] === '{') [labels, i] = parseLabels(line, i, lineNo);
    if (line[i] !== ' ') throw new ParseError(lineNo, 'expected a space before the value', line);
    const parts = line.slice(i + 1).split(' ');
    if (parts.length > 2 || parts[0] === '') throw new ParseError(lineNo, 'expected "value [timestamp]"', line);
    const value = parseNumber(parts[0]);
    if (value === undefined) throw new ParseError(lineNo, `bad value ${parts[0]}`, line);
    if (parts.length === 2 && !/^-?\d+$/.test(parts[1])) throw new ParseError(lineNo, `bad timestamp ${parts[1]}`, line);
    const fname = familyOf(name, types);
    if (closed.has(fname)) throw new ParseError(lineNo, `samples of ${fname} are not contiguous`, line);
    if (current !== null && current !== fname) closed.add(current);
    current = fname;
    const f = family(fname);
    const key = `${name}{${Object.keys(labels).sort().map((k) => `${k}=${JSON.stringify(labels[k])}`).join(',')}}`;
    if (seenSeries.has(key)) throw new ParseError(lineNo, `duplicate series ${key}`, line);
    seenSeries.add(key);
    if (f.type === 'counter' && !(value >= 0)) throw new ParseError(lineNo, 'a counter must be a non-negative number', line);
    if (f.type === 'histogram') {
      if (name === `${fname}_bucket`) {
        if (!('le' in labels)) throw new ParseError(lineNo, 'a histogram bucket needs an le label', line);
        if (parseNumber(labels.le) === undefined || Number.isNaN(parseNumber(labels.le))) throw new ParseError(lineNo, `bad le ${labels.le}`, line);
      } else if (name !== `${fname}_sum` && name !== `${fname}_count`) {
        throw new ParseError(lineNo, `${name} is not a sample of histogram ${fname}`, line);
      }
      if ('le' in labels && name !== `${fname}_bucket`) throw new ParseError(lineNo, 'le only belongs on buckets', line);
    }
    f.samples.push({ name, labels, value });
  });
  for (const f of families.values()) {
    if (f.type === 'histogram') checkHistogram(f);
  }
  return families;
}

function checkHistogram(f) {
  // Group by the labels other than `le`.
  const groups = new Map();
  for (const s of f.samples) {
    const { le, ...rest } = s.labels;
    const key = JSON.stringify(Object.entries(rest).sort());
    if (!groups.has(key)) groups.set(key, { buckets: [], sum: undefined, count: undefined });
    const g = groups.get(key);
    if (s.name.endsWith('_bucket')) g.buckets.push({ le: parseNumber(le), value: s.value });
    else if (s.name.endsWith('_sum')) g.sum = s.value;
    else g.count = s.value;
  }
  if (groups.size === 0) throw new ParseError(0, `histogram ${f.name} has no samples`);
  for (const [key, g] of groups) {
    const what = `histogram ${f.name}${key === '[]' ? '' : ` ${key}`}`;
    if (g.buckets.length === 0) throw new ParseError(0, `${what} has no buckets`);
    for (let i = 1; i < g.buckets.length; i++) {
      if (!(g.buckets[i].le > g.buckets[i - 1].le)) throw new ParseError(0, `${what}: bucket bounds are not ascending (${g.buckets[i - 1].le}, ${g.buckets[i].le})`);
      if (g.buckets[i].value < g.buckets[i - 1].value) throw new ParseError(0, `${what}: cumulative counts decrease at le=${g.buckets[i].le}`);
    }
    const last = g.buckets[g.buckets.length - 1];
    if (last.le !== Infinity) throw new ParseError(0, `${what} has no +Inf bucket`);
    if (g.count === undefined) throw new ParseError(0, `${what} has no _count`);
    if (g.sum === undefined) throw new ParseError(0, `${what} has no _sum`);
    if (g.count !== last.value) throw new ParseError(0, `${what}: _count ${g.count} differs from the +Inf bucket ${last.value}`);
  }
}

/** The value of one series: `value(families, 'x_total', {reason: 'y'})`; undefined if absent. */
function value(families, name, labels = {}) {
  for (const f of families.values()) {
    for (const s of f.samples) {
      if (s.name !== name) continue;
      const keys = Object.keys(s.labels);
      if (keys.length === Object.keys(labels).length && keys.every((k) => s.labels[k] === labels[k])) return s.value;
    }
  }
  return undefined;
}

module.exports = { parse, value, ParseError };
