// Free ports for servers that must listen on a port chosen in advance.
'use strict';

const fs = require('node:fs');
const net = require('node:net');

/** The kernel's ephemeral range (where outgoing connections take their local ports). */
function ephemeralRange() {
  try {
    const [lo, hi] = fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
    if (lo > 0 && hi >= lo) return [lo, hi];
  } catch {}
  return [32768, 60999];
}

function canListen(port, host) {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen({ port, host, exclusive: true }, () => srv.close(() => resolve(true)));
  });
}

const handedOut = new Set();

/**
 * A port that is free right now, for servers that must listen on a port chosen in advance (child
 * processes, restarts on the same port, redis-server). It is taken below the ephemeral range, so
 * that no outgoing connection can grab it between now and the moment the server binds it, and
 * never handed out twice by this process.
 */
async function freePort() {
  const [lo] = ephemeralRange();
  const min = 10_000;
  const max = Math.max(min + 1000, lo - 1);
  for (let attempt = 0; attempt < 200; attempt++) {
    const port = min + Math.floor(Math.random() * (max - min));
    if (handedOut.has(port)) continue;
    if ((await canListen(port, '0.0.0.0')) && (await canListen(port, '127.0.0.1'))) {
      handedOut.add(port);
      return port;
    }
  }
  throw new Error('no free port found');
}

module.exports = { freePort };
