#!/usr/bin/env node
// An idle Node process that only measures its own event-loop delay, the same way the server
// process is measured (bench/lib/control.js). Run beside a scenario, it shows the floor the
// machine itself sets: the delay any JS thread sees when it waits for a core. Commands on stdin
// (one JSON answer per line): `start` resets and starts measuring, `stop` answers the summary.
'use strict';

const readline = require('node:readline');
const { monitorEventLoopDelay } = require('node:perf_hooks');
const { eldSummary, ELD_RESOLUTION_MS } = require('./control');

let eld = null;
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  if (line === 'start') {
    eld = monitorEventLoopDelay({ resolution: ELD_RESOLUTION_MS });
    eld.enable();
    console.log(JSON.stringify({ event: 'started' }));
  } else if (line === 'stop' && eld) {
    eld.disable();
    console.log(JSON.stringify({ event: 'stopped', event_loop_delay: eldSummary(eld) }));
    eld = null;
  } else if (line === 'quit') {
    process.exit(0);
  }
});
