// Private Redis topologies for the production-Redis suites: TLS (certificates made at test time
// by `openssl`: a private CA, a server certificate, a client certificate for mutual TLS), a
// Sentinel set (1 master, 1 replica, 3 sentinels) and a Redis Cluster (3 masters + 3 replicas).
// Every process is a real redis-server on a free loopback port, killed when the test process
// exits (test-kit tracks every child). Nothing persists: each node runs in its own temporary
// directory with `--save ''` and no AOF.
'use strict';

const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const kit = require('../test-kit');
const h = require('./helpers');

function tempDir(prefix) {
  return fs.mkdtempSync(path.join(os.tmpdir(), `rt-${prefix}-`));
}

function opensslInstalled() {
  const r = spawnSync('openssl', ['version'], { encoding: 'utf8' });
  return !r.error && r.status === 0;
}

/** The `skip` option for suites that also need openssl (TLS). */
function tlsSkipReason() {
  const redis = h.redisSkipReason();
  if (redis) return redis;
  if (opensslInstalled() || process.env.REQUIRE_REDIS === '1') return false;
  return 'openssl is not installed (set REQUIRE_REDIS=1 to make this a failure)';
}

function run(cmd, args, what) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 20_000 });
  if (r.error || r.status !== 0) {
    throw new Error(`${what} failed (${cmd} ${args.join(' ')}): ${r.error ? r.error.message : r.stderr}`);
  }
  return r.stdout;
}

/**
 * A private CA and certificates it signed, as PEM files in a temporary folder:
 * `{ dir, ca, server: {cert, key}, client: {cert, key}, otherCa }` (paths) and `pem(file)`.
 * The server certificate names `localhost` and `127.0.0.1`; `otherCa` signed nothing here (a
 * wrong CA for the refusal tests).
 */
function makeCertificates() {
  const dir = tempDir('tls');
  const f = (name) => path.join(dir, name);
  const ca = (name) => {
    run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', `/CN=${name}`,
      '-keyout', f(`${name}.key`), '-out', f(`${name}.crt`)], `making the CA ${name}`);
  };
  ca('test-ca');
  ca('other-ca');
  const leaf = (name, extensions) => {
    fs.writeFileSync(f(`${name}.ext`), extensions);
    run('openssl', ['req', '-newkey', 'rsa:2048', '-nodes', '-subj', `/CN=${name}`,
      '-keyout', f(`${name}.key`), '-out', f(`${name}.csr`)], `making the ${name} key`);
    run('openssl', ['x509', '-req', '-in', f(`${name}.csr`), '-CA', f('test-ca.crt'), '-CAkey', f('test-ca.key'),
      '-CAcreateserial', '-days', '2', '-extfile', f(`${name}.ext`), '-out', f(`${name}.crt`)], `signing the ${name} certificate`);
  };
  // clientAuth too: cluster nodes present it to each other on the TLS cluster bus.
  leaf('server', 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n');
  leaf('client', 'extendedKeyUsage=clientAuth\n');
  return {
    dir,
    ca: f('test-ca.crt'),
    otherCa: f('other-ca.crt'),
    server: { cert: f('server.crt'), key: f('server.key') },
    client: { cert: f('client.crt'), key: f('client.key') },
    pem: (file) => fs.readFileSync(file, 'utf8'),
  };
}

/** redis-cli over TLS with the test CA (and the client certificate, for mutual TLS). */
function tlsCli(port, certs, args) {
  const r = spawnSync('redis-cli', ['-h', '127.0.0.1', '-p', String(port), '--tls', '--cacert', certs.ca,
    '--cert', certs.client.cert, '--key', certs.client.key, ...args], { encoding: 'utf8', timeout: 5000 });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** One redis-server node: `{ port, proc, url, kill(), restart() }`; `args` come after the defaults. */
async function startNode(args, { cli = (port, a) => h.redisCli(port, a), port, dir } = {}) {
  port = port ?? (await h.freePort());
  dir = dir ?? tempDir(`node-${port}`);
  const node = await kit.startRedis({
    port,
    args: ['--dir', dir, ...args],
    ready: () => {
      const r = cli(port, ['PING']);
      return r.status === 0 && /PONG|NOAUTH/.test(r.stdout);
    },
  });
  node.dir = dir;
  return node;
}

/**
 * A TLS-only redis-server (`--port 0`, TLS on a free port) with the given certificates.
 * `mutual`: clients must present a certificate signed by the CA.
 */
async function startTlsRedis(certs, { mutual = false } = {}) {
  const tlsPort = await h.freePort();
  const node = await kit.startRedis({
    port: tlsPort,
    // The last --port wins: no plain TCP, TLS on tlsPort.
    args: ['--port', '0', '--tls-port', String(tlsPort), '--dir', tempDir(`tls-${tlsPort}`),
      '--tls-cert-file', certs.server.cert, '--tls-key-file', certs.server.key, '--tls-ca-cert-file', certs.ca,
      '--tls-auth-clients', mutual ? 'yes' : 'no'],
    ready: () => {
      const r = tlsCli(tlsPort, certs, ['PING']);
      return r.status === 0 && r.stdout.trim() === 'PONG';
    },
  });
  return {
    port: tlsPort,
    url: `rediss://127.0.0.1:${tlsPort}`,
    cli: (args) => tlsCli(tlsPort, certs, args),
    stop: () => node.stop(),
  };
}

/** A redis-server with a password (`requirepass`) and an ACL user `app` with password `app-pw`. */
async function startAuthRedis(password = 'right-password') {
  const node = await startNode(['--requirepass', password]);
  const cli = (args) => h.redisCli(node.port, ['-a', password, '--no-auth-warning', ...args]);
  const r = cli(['ACL', 'SETUSER', 'app', 'on', '>app-pw', '~*', '&*', '+@all']);
  if (r.stdout.trim() !== 'OK') throw new Error(`ACL SETUSER failed: ${r.stdout} ${r.stderr}`);
  return { ...node, password, cli, url: `redis://:${password}@127.0.0.1:${node.port}`, stop: () => node.kill('SIGTERM') };
}

function infoField(text, field) {
  const m = new RegExp(`^${field}:(.*)$`, 'm').exec(text);
  return m ? m[1].trim() : undefined;
}

/**
 * Sentinel: a master, one replica and three sentinels watching `masterName` (quorum 2, a master
 * is down after 1 s of silence). `{ master, replica, sentinels, url(db?), currentMaster(),
 * killMaster(), stop() }`; `url()` is the redis+sentinel:// URL listing every sentinel.
 * `sentinelPassword`: the sentinels require it (`requirepass`); `url()` does not carry it.
 */
async function startSentinelSet({ masterName = 'mymaster', sentinelPassword } = {}) {
  const master = await startNode([]);
  const replica = await startNode(['--replicaof', '127.0.0.1', String(master.port)]);
  await h.waitUntil(() => infoField(h.redisCli(replica.port, ['INFO', 'replication']).stdout, 'master_link_status') === 'up',
    'the replica is in sync', 10_000, 50);
  const sentinels = [];
  for (let i = 0; i < 3; i++) {
    const port = await h.freePort();
    const dir = tempDir(`sentinel-${port}`);
    const conf = path.join(dir, 'sentinel.conf');
    fs.writeFileSync(conf, [
      `port ${port}`, 'bind 127.0.0.1', `dir ${dir}`,
      `sentinel monitor ${masterName} 127.0.0.1 ${master.port} 2`,
      `sentinel down-after-milliseconds ${masterName} 1000`,
      `sentinel failover-timeout ${masterName} 4000`,
      `sentinel parallel-syncs ${masterName} 1`,
      // The sentinels' own password (clients give it as sentinelPassword), also between them.
      ...(sentinelPassword ? [`requirepass ${sentinelPassword}`, `sentinel sentinel-pass ${sentinelPassword}`] : []), '',
    ].join('\n'));
    const proc = h.spawnProcess('redis-server', [conf, '--sentinel']);
    sentinels.push({ port, proc });
  }
  const auth = sentinelPassword ? ['-a', sentinelPassword, '--no-auth-warning'] : [];
  for (const s of sentinels) {
    await h.waitUntil(() => {
      if (s.proc.exitInfo) throw new Error(`sentinel exited: ${s.proc.out()} ${s.proc.err()}`);
      const r = h.redisCli(s.port, [...auth, 'SENTINEL', 'sentinels', masterName]);
      // Each sentinel knows the two others (found through the master's hello channel).
      return r.status === 0 && (r.stdout.match(/^name$/gm) || []).length >= 2;
    }, `sentinel ${s.port} knows the other two`, 15_000, 100);
  }
  const currentMaster = () => {
    const r = h.redisCli(sentinels[0].port, [...auth, 'SENTINEL', 'get-master-addr-by-name', masterName]);
    const [host, port] = r.stdout.trim().split('\n');
    return { host, port: Number(port) };
  };
  const nodes = [master, replica];
  return {
    masterName,
    master,
    replica,
    sentinels,
    nodes,
    url: (db) => `redis+sentinel://${sentinels.map((s) => `127.0.0.1:${s.port}`).join(',')}/${masterName}${db == null ? '' : `/${db}`}`,
    currentMaster,
    /** SIGKILLs the current master and waits until the sentinels have promoted the replica. */
    async killMaster(ms = 30_000) {
      const before = currentMaster().port;
      const node = nodes.find((n) => n.port === before);
      await node.kill('SIGKILL');
      await h.waitUntil(() => currentMaster().port !== before, 'the sentinels promote the replica', ms, 100);
      return { killed: node, promoted: nodes.find((n) => n.port === currentMaster().port) };
    },
    async stop() {
      await Promise.all([...sentinels.map((s) => s.proc.stop()), ...nodes.map((n) => n.kill())]);
    },
  };
}

/**
 * A Redis Cluster of 3 masters + 3 replicas (`redis-cli --cluster create … --cluster-replicas 1`),
 * node timeout 1 s. `{ nodes, url(), slotOwner(key), killOwnerOf(key), cli(port, args) }`.
 */
async function startCluster() {
  const nodes = [];
  for (let i = 0; i < 6; i++) {
    const busPort = await h.freePort();
    nodes.push(await startNode(['--cluster-enabled', 'yes', '--cluster-config-file', 'nodes.conf',
      '--cluster-node-timeout', '1000', '--cluster-port', String(busPort)]));
  }
  run('redis-cli', ['--cluster', 'create', ...nodes.map((n) => `127.0.0.1:${n.port}`), '--cluster-replicas', '1',
    '--cluster-yes'], 'redis-cli --cluster create');
  const clusterOk = (port) => infoField(h.redisCli(port, ['CLUSTER', 'INFO']).stdout, 'cluster_state') === 'ok';
  await h.waitUntil(() => nodes.every((n) => clusterOk(n.port)), 'every cluster node reports cluster_state:ok', 20_000, 100);
  // Every replica in sync, so that a failover loses nothing that WAIT confirmed.
  const role = (port) => infoField(h.redisCli(port, ['INFO', 'replication']).stdout, 'role');
  await h.waitUntil(() => nodes.every((n) => role(n.port) === 'master' ||
    infoField(h.redisCli(n.port, ['INFO', 'replication']).stdout, 'master_link_status') === 'up'), 'every replica is in sync', 20_000, 100);
  const alive = () => nodes.filter((n) => !n.proc.exitInfo);
  /** The port of the master serving `key`'s slot now (asked of a live node). */
  const slotOwner = (key) => {
    const slot = Number(h.redisCli(alive()[0].port, ['CLUSTER', 'KEYSLOT', key]).stdout.trim());
    const shards = h.redisCli(alive()[0].port, ['CLUSTER', 'SLOTS']).stdout.split('\n').map((l) => l.trim());
    // CLUSTER SLOTS (redis-cli raw): start, end, master ip, master port, master id, then replicas.
    for (let i = 0; i + 3 < shards.length; i++) {
      const [start, end, ip, port] = shards.slice(i, i + 4);
      if (/^\d+$/.test(start) && /^\d+$/.test(end) && ip === '127.0.0.1' && /^\d+$/.test(port) &&
        Number(start) <= slot && slot <= Number(end)) return Number(port);
    }
    throw new Error(`no owner found for slot ${slot}`);
  };
  return {
    nodes,
    alive,
    url: () => `redis+cluster://${nodes.slice(0, 3).map((n) => `127.0.0.1:${n.port}`).join(',')}`,
    slotOwner,
    cli: (port, args) => h.redisCli(port, ['-c', ...args]),
    /** SIGKILLs the master owning `key`'s slot; waits until a replica took the slot over. */
    async killOwnerOf(key, ms = 30_000) {
      const owner = slotOwner(key);
      const node = nodes.find((n) => n.port === owner);
      await node.kill('SIGKILL');
      await h.waitUntil(() => {
        try {
          const now = slotOwner(key);
          return now !== owner && clusterOk(now) && now;
        } catch {
          return false;
        }
      }, `a replica takes over the slot of ${key}`, ms, 100);
      return { killed: node, promoted: slotOwner(key) };
    },
    async stop() {
      await Promise.all(nodes.map((n) => n.kill()));
    },
  };
}

/**
 * A Redis Cluster of 3 masters + 3 replicas speaking only TLS (clients, replication and the
 * cluster bus), with `certs` from makeCertificates(). `{ nodes, url(), cli(port, args), stop() }`;
 * `url()` is the rediss+cluster:// URL of three seeds.
 */
async function startTlsCluster(certs) {
  const nodes = [];
  const tls = ['--tls-cert-file', certs.server.cert, '--tls-key-file', certs.server.key, '--tls-ca-cert-file', certs.ca,
    '--tls-auth-clients', 'no', '--tls-replication', 'yes', '--tls-cluster', 'yes'];
  for (let i = 0; i < 6; i++) {
    const port = await h.freePort();
    const busPort = await h.freePort();
    nodes.push(await startNode(['--port', '0', '--tls-port', String(port), ...tls, '--cluster-enabled', 'yes',
      '--cluster-config-file', 'nodes.conf', '--cluster-node-timeout', '1000', '--cluster-port', String(busPort)],
    { port, cli: (p, args) => tlsCli(p, certs, args) }));
  }
  run('redis-cli', ['--tls', '--cacert', certs.ca, '--cert', certs.client.cert, '--key', certs.client.key, '--cluster', 'create',
    ...nodes.map((n) => `127.0.0.1:${n.port}`), '--cluster-replicas', '1', '--cluster-yes'], 'redis-cli --cluster create (TLS)');
  const cli = (port, args) => tlsCli(port, certs, ['-c', ...args]);
  await h.waitUntil(() => nodes.every((n) => infoField(cli(n.port, ['CLUSTER', 'INFO']).stdout, 'cluster_state') === 'ok'),
    'every TLS cluster node reports cluster_state:ok', 20_000, 100);
  return {
    nodes,
    cli,
    url: () => `rediss+cluster://${nodes.slice(0, 3).map((n) => `127.0.0.1:${n.port}`).join(',')}`,
    async stop() {
      await Promise.all(nodes.map((n) => n.kill()));
    },
  };
}

module.exports = {
  tlsSkipReason,
  opensslInstalled,
  makeCertificates,
  startNode,
  startTlsRedis,
  startAuthRedis,
  startSentinelSet,
  startCluster,
  startTlsCluster,
  infoField,
  tempDir,
};
