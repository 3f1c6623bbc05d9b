// Redis deployments for the e2e suite (README, "Redis deployments"): a TLS
// Redis with a CA made by openssl in the test, a Sentinel set (one master,
// one replica, three sentinels) and a 3-master Redis Cluster. Every
// redis-server process is started here on free ports and SIGKILLed by PID
// when the test process exits.
//
// E2E_REDIS_MODE=tls | sentinel | cluster makes harness.mjs start one of these per test
// file (each file is its own process) and point every server, worker and the
// test's own Redis client at it; unset or `standalone` keeps the shared Redis
// of REDIS. Nothing is skipped: a redis-server without TLS fails the test with
// the reason.
//
// Self-contained (no import of harness.mjs) so that harness.mjs can import it.

import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import crypto from 'node:crypto'
import { spawn, execFileSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'
import { createClient, createCluster } from 'redis'

const here = path.dirname(fileURLToPath(import.meta.url))
const LOG_DIR = path.join(here, '.logs')
const REDIS_SERVER = process.env.REDIS_SERVER_BIN || 'redis-server'

export const MODES = ['standalone', 'tls', 'sentinel', 'cluster']

/** @type {Set<RedisNode>} */
const liveNodes = new Set()
process.on('exit', () => { for (const n of liveNodes) { try { n.proc?.kill('SIGKILL') } catch {} } })

/** Ports this process handed out: the kernel may offer a closed probe's port again. */
const handedOut = new Set()

/** A free TCP port on 127.0.0.1 (harness.mjs re-exports it), never one handed out before. */
export async function freePort () {
  for (;;) {
    const port = await new Promise((resolve, reject) => {
      const srv = net.createServer()
      srv.unref()
      srv.on('error', reject)
      srv.listen(0, '127.0.0.1', () => {
        const { port } = /** @type {net.AddressInfo} */ (srv.address())
        srv.close(() => resolve(port))
      })
    })
    if (!handedOut.has(port)) {
      handedOut.add(port)
      return port
    }
  }
}

const tail = (file, lines = 30) => {
  try { return fs.readFileSync(file, 'utf8').split('\n').slice(-lines).join('\n') } catch (e) { return `(${e.message})` }
}

/** One RESP command over a plain TCP connection; resolves with the raw reply text. */
export function respCommand (port, args, { timeout = 2000 } = {}) {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ port, host: '127.0.0.1' })
    let buf = ''
    const done = (err, v) => { sock.removeAllListeners(); sock.destroy(); err ? reject(err) : resolve(v) }
    sock.once('connect', () => {
      sock.write(`*${args.length}\r\n` + args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join(''))
    })
    sock.on('data', (d) => {
      buf += d.toString('latin1')
      // enough for the small replies used here: a simple string, an error, an
      // integer, a nil, a bulk string, or an array of bulk strings
      const lines = buf.split('\r\n')
      if (/^[+\-:]/.test(buf) && lines.length > 1) return done(null, buf)
      if (/^\*-1\r\n/.test(buf) || /^\$-1\r\n/.test(buf)) return done(null, buf)
      const bulk = /^\$(\d+)\r\n/.exec(buf)
      if (bulk && Buffer.byteLength(buf, 'latin1') >= bulk[0].length + Number(bulk[1]) + 2) return done(null, buf)
      const m = /^\*(\d+)\r\n/.exec(buf)
      if (m && lines.filter((l) => !l.startsWith('$') && !l.startsWith('*')).length > Number(m[1])) done(null, buf)
    })
    sock.once('error', (e) => done(e))
    sock.setTimeout(timeout, () => done(new Error(`no reply from port ${port} to ${args[0]}`)))
  })
}

/** A redis-server (or sentinel) process of this test. */
export class RedisNode {
  /** @param {{ name: string, port: number, args: string[], dir: string, tlsPing?: () => Promise<boolean> }} o */
  constructor ({ name, port, args, dir, ping }) {
    this.name = name
    this.port = port
    this.args = args
    this.dir = dir
    this.logPath = path.join(dir, `${name}.log`)
    this.ping = ping || (async () => (await respCommand(this.port, ['PING'])).startsWith('+PONG'))
    /** @type {import('node:child_process').ChildProcess | null} */
    this.proc = null
  }

  get running () { return this.proc !== null && this.proc.exitCode === null && this.proc.signalCode === null }

  async start (timeout = 15000) {
    fs.mkdirSync(this.dir, { recursive: true })
    const fd = fs.openSync(this.logPath, 'a')
    fs.writeSync(fd, `# ${REDIS_SERVER} ${this.args.join(' ')}\n`)
    const proc = spawn(REDIS_SERVER, this.args, { stdio: ['ignore', fd, fd], cwd: this.dir })
    fs.closeSync(fd)
    proc.unref()
    this.proc = proc
    this.exited = new Promise((resolve) => proc.once('exit', resolve))
    liveNodes.add(this)
    let spawnError = null
    proc.once('error', (e) => { spawnError = e })
    const deadline = Date.now() + timeout
    for (;;) {
      if (spawnError) throw new Error(`cannot start ${REDIS_SERVER}: ${spawnError.message}`)
      if (!this.running) throw new Error(`${this.name} (${REDIS_SERVER}) exited at start:\n${tail(this.logPath)}`)
      try { if (await this.ping()) return this } catch {}
      if (Date.now() > deadline) throw new Error(`${this.name} on port ${this.port} did not answer within ${timeout} ms:\n${tail(this.logPath)}`)
      await sleep(50)
    }
  }

  /** SIGKILL and wait until it is gone. */
  async kill () {
    if (!this.proc) return
    // unref'd at start (a test process must not wait for it); waiting for
    // its exit event needs the loop to stay alive
    this.proc.ref()
    if (this.running) { try { this.proc.kill('SIGKILL') } catch {} }
    await this.exited
    liveNodes.delete(this)
  }
}

/**
 * A CA, a server certificate for 127.0.0.1/localhost and a client
 * certificate signed by it, plus an unrelated CA (for the wrong-CA test).
 * EC P-256 keys (fast to make).
 */
export function makeCertificates (dir) {
  fs.mkdirSync(dir, { recursive: true })
  const f = (n) => path.join(dir, n)
  const ssl = (...args) => execFileSync('openssl', args, { stdio: 'pipe', cwd: dir })
  const newKey = (name) => ssl('genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', f(name))
  const ca = (name, cn) => {
    newKey(`${name}.key`)
    ssl('req', '-x509', '-new', '-key', f(`${name}.key`), '-out', f(`${name}.pem`), '-days', '2', '-subj', `/CN=${cn}`,
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign')
  }
  const leaf = (name, cn, ext) => {
    newKey(`${name}.key`)
    ssl('req', '-new', '-key', f(`${name}.key`), '-out', f(`${name}.csr`), '-subj', `/CN=${cn}`)
    fs.writeFileSync(f(`${name}.ext`), ext)
    ssl('x509', '-req', '-in', f(`${name}.csr`), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial',
      '-out', f(`${name}.pem`), '-days', '2', '-extfile', f(`${name}.ext`))
  }
  ca('ca', 'y-redis e2e CA')
  ca('other-ca', 'some other CA')
  leaf('server', 'localhost', 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n')
  leaf('client', 'y-redis e2e client', 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n')
  return {
    ca: f('ca.pem'),
    otherCa: f('other-ca.pem'),
    serverCert: f('server.pem'),
    serverKey: f('server.key'),
    clientCert: f('client.pem'),
    clientKey: f('client.key')
  }
}

const ACL_USER = 'yredis'
const ACL_PASSWORD = 'e2e-acl-secret'

/**
 * A TLS-only redis-server (`--port 0 --tls-port`) requiring client
 * certificates, with an ACL user; `env` is what y-redis processes get.
 */
export async function startTlsRedis ({ tag = 'tls' } = {}) {
  const dir = path.join(LOG_DIR, `${tag}-${crypto.randomBytes(3).toString('hex')}`)
  const certs = makeCertificates(path.join(dir, 'certs'))
  const port = await freePort()
  const tlsOptions = () => ({
    tls: true,
    host: '127.0.0.1',
    port,
    ca: fs.readFileSync(certs.ca),
    cert: fs.readFileSync(certs.clientCert),
    key: fs.readFileSync(certs.clientKey)
  })
  const url = `rediss://${ACL_USER}:${ACL_PASSWORD}@127.0.0.1:${port}`
  const node = new RedisNode({
    name: 'redis-tls',
    port,
    dir,
    args: ['--port', '0', '--tls-port', String(port), '--bind', '127.0.0.1',
      '--tls-cert-file', certs.serverCert, '--tls-key-file', certs.serverKey, '--tls-ca-cert-file', certs.ca,
      '--tls-auth-clients', 'yes', '--save', '', '--appendonly', 'no', '--protected-mode', 'no',
      '--user', 'default', 'off',
      '--user', ACL_USER, 'on', `>${ACL_PASSWORD}`, '~*', '&*', '+@all'],
    ping: async () => {
      const c = createClient({ url, socket: { ...tlsOptions(), reconnectStrategy: false } })
      c.on('error', () => {})
      try { await c.connect(); return (await c.ping()) === 'PONG' } finally { try { await c.disconnect() } catch {} }
    }
  })
  try {
    await node.start()
  } catch (e) {
    // a build without TLS does not know the option
    if (/Bad directive|tls-port/i.test(e.message)) {
      let version = ''
      try { version = execFileSync(REDIS_SERVER, ['--version'], { encoding: 'utf8' }).trim() } catch {}
      throw new Error(`${REDIS_SERVER} (${version}) cannot serve TLS; the TLS tests need a redis-server built with TLS (BUILD_TLS=yes; Debian's is):\n${e.message}`)
    }
    throw e
  }
  return {
    mode: 'tls',
    nodes: [node],
    certs,
    url,
    env: {
      REDIS: url,
      REDIS_TLS_CA_FILE: certs.ca,
      REDIS_TLS_CERT_FILE: certs.clientCert,
      REDIS_TLS_KEY_FILE: certs.clientKey
    },
    /** a node-redis client of this Redis */
    async client () {
      const c = createClient({ url, socket: { ...tlsOptions(), reconnectStrategy: (n) => Math.min(50 * (n + 1), 500) } })
      c.on('error', () => {})
      await c.connect()
      return c
    },
    describe: () => `TLS redis-server on port ${port} (client certificates required, ACL user ${ACL_USER}); log ${node.logPath}`,
    async stop () { await node.kill() },
    dir
  }
}

export const SENTINEL_MASTER = 'e2emaster'

/**
 * One master, one replica and three sentinels (quorum 2, the master counted
 * down after 1 s). `env` is what y-redis processes get.
 */
export async function startSentinelSet ({ tag = 'sentinel', tls = false } = {}) {
  const dir = path.join(LOG_DIR, `${tag}-${crypto.randomBytes(3).toString('hex')}`)
  // with `tls`: master, replica (replication included) and sentinels speak
  // TLS only, with a CA made here; clients need no certificate
  const certs = tls ? makeCertificates(path.join(dir, 'certs')) : null
  const tlsFiles = certs
    ? ['--tls-cert-file', certs.serverCert, '--tls-key-file', certs.serverKey, '--tls-ca-cert-file', certs.ca,
        '--tls-auth-clients', 'no', '--tls-replication', 'yes']
    : []
  const portArgs = (port) => certs ? ['--port', '0', '--tls-port', String(port)] : ['--port', String(port)]
  const cliTls = certs ? ['--tls', '--cacert', certs.ca] : []
  /** one command; with TLS through redis-cli, else a plain RESP exchange; reply lines */
  const command = async (port, args) => certs
    ? execFileSync('redis-cli', [...cliTls, '-p', String(port), ...args], { encoding: 'utf8', timeout: 3000, stdio: ['ignore', 'pipe', 'pipe'] }).trim().split('\n')
    : (await respCommand(port, args)).split('\r\n').filter((l) => l && !/^[*$]/.test(l)).map((l) => l.replace(/^[+:]/, ''))
  const ping = (port) => async () => (await command(port, ['PING']))[0] === 'PONG'
  const common = ['--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--protected-mode', 'no', ...tlsFiles]
  const masterPort = await freePort()
  const replicaPort = await freePort()
  const master = new RedisNode({ name: 'master', port: masterPort, dir: path.join(dir, 'master'), args: [...portArgs(masterPort), ...common], ping: ping(masterPort) })
  const replica = new RedisNode({
    name: 'replica',
    port: replicaPort,
    dir: path.join(dir, 'replica'),
    args: [...portArgs(replicaPort), ...common, '--replicaof', '127.0.0.1', String(masterPort)],
    ping: ping(replicaPort)
  })
  await master.start()
  await replica.start()
  const sentinels = []
  for (let i = 1; i <= 3; i++) {
    const port = await freePort()
    const sdir = path.join(dir, `sentinel${i}`)
    fs.mkdirSync(sdir, { recursive: true })
    const conf = path.join(sdir, 'sentinel.conf')
    fs.writeFileSync(conf, [
      ...(certs
        ? ['port 0', `tls-port ${port}`, `tls-cert-file ${certs.serverCert}`, `tls-key-file ${certs.serverKey}`,
            `tls-ca-cert-file ${certs.ca}`, 'tls-auth-clients no', 'tls-replication yes']
        : [`port ${port}`]),
      'bind 127.0.0.1',
      'protected-mode no',
      `dir ${sdir}`,
      `sentinel monitor ${SENTINEL_MASTER} 127.0.0.1 ${masterPort} 2`,
      `sentinel down-after-milliseconds ${SENTINEL_MASTER} 1000`,
      `sentinel failover-timeout ${SENTINEL_MASTER} 10000`,
      `sentinel parallel-syncs ${SENTINEL_MASTER} 1`,
      ''
    ].join('\n'))
    const s = new RedisNode({ name: `sentinel${i}`, port, dir: sdir, args: [conf, '--sentinel'], ping: ping(port) })
    await s.start()
    sentinels.push(s)
  }
  const set = {
    mode: 'sentinel',
    nodes: [master, replica, ...sentinels],
    master,
    replica,
    sentinels,
    certs,
    env: {
      REDIS: certs ? 'rediss://localhost:6379' : 'redis://127.0.0.1:6379',
      REDIS_SENTINELS: sentinels.map((s) => `127.0.0.1:${s.port}`).join(','),
      REDIS_SENTINEL_MASTER: SENTINEL_MASTER,
      ...(certs ? { REDIS_TLS_CA_FILE: certs.ca } : {})
    },
    /** the master's port as the first answering sentinel names it */
    async masterPort () {
      for (const s of sentinels) {
        if (!s.running) continue
        try {
          const lines = await command(s.port, ['SENTINEL', 'get-master-addr-by-name', SENTINEL_MASTER])
          if (lines.length === 2) return Number(lines[1])
        } catch {}
      }
      throw new Error('no sentinel names a master')
    },
    /** a node-redis client of the present master */
    async client () {
      const port = await set.masterPort()
      const tlsSocket = certs ? { tls: true, host: '127.0.0.1', port, ca: fs.readFileSync(certs.ca) } : {}
      const c = createClient({ url: `${certs ? 'rediss' : 'redis'}://127.0.0.1:${port}`, socket: { ...tlsSocket, reconnectStrategy: (n) => Math.min(50 * (n + 1), 500) } })
      c.on('error', () => {})
      await c.connect()
      return c
    },
    describe: () => `Sentinel set: master ${masterPort}, replica ${replicaPort}, sentinels ${sentinels.map((s) => s.port).join(',')}; logs in ${dir}`,
    async stop () { for (const n of set.nodes) await n.kill() },
    dir
  }
  // the sentinels found the replica (so a failover has somewhere to go)
  const deadline = Date.now() + 20000
  for (;;) {
    const reply = (await command(sentinels[0].port, ['SENTINEL', 'replicas', SENTINEL_MASTER]).catch(() => [])).join(' ')
    if (reply.includes(String(replicaPort))) break
    if (Date.now() > deadline) throw new Error(`sentinels did not find the replica within 20 s; ${set.describe()}`)
    await sleep(200)
  }
  return set
}

/**
 * Three masters (`--cluster-enabled yes`) joined by `redis-cli --cluster
 * create`, no replicas. `env` is what y-redis processes get: two of the
 * three as seed nodes.
 */
export async function startCluster ({ tag = 'cluster', masters = 3, tls = false } = {}) {
  const dir = path.join(LOG_DIR, `${tag}-${crypto.randomBytes(3).toString('hex')}`)
  // with `tls`: TLS-only nodes (clients and the cluster bus), a CA made here
  const certs = tls ? makeCertificates(path.join(dir, 'certs')) : null
  const tlsArgs = certs
    ? ['--tls-cert-file', certs.serverCert, '--tls-key-file', certs.serverKey, '--tls-ca-cert-file', certs.ca,
        '--tls-auth-clients', 'no', '--tls-cluster', 'yes', '--tls-replication', 'yes']
    : []
  const cliTls = certs ? ['--tls', '--cacert', certs.ca] : []
  const nodes = []
  for (let i = 1; i <= masters; i++) {
    const port = await freePort()
    // the cluster bus port, by default port + 10000, which may be taken or past 65535
    const busPort = await freePort()
    const ndir = path.join(dir, `node${i}`)
    const n = new RedisNode({
      name: `node${i}`,
      port,
      dir: ndir,
      args: [...(certs ? ['--port', '0', '--tls-port', String(port)] : ['--port', String(port)]),
        '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--protected-mode', 'no',
        '--cluster-enabled', 'yes', '--cluster-port', String(busPort),
        '--cluster-config-file', path.join(ndir, 'nodes.conf'), '--cluster-node-timeout', '3000', ...tlsArgs],
      ping: certs
        ? async () => execFileSync('redis-cli', [...cliTls, '-p', String(port), 'PING'], { encoding: 'utf8', timeout: 3000, stdio: ['ignore', 'pipe', 'pipe'] }).trim() === 'PONG'
        : undefined
    })
    await n.start()
    nodes.push(n)
  }
  try {
    execFileSync('redis-cli', [...cliTls, '--cluster', 'create', ...nodes.map((n) => `127.0.0.1:${n.port}`), '--cluster-replicas', '0', '--cluster-yes'],
      { stdio: 'pipe', timeout: 30000 })
  } catch (e) {
    throw new Error(`redis-cli --cluster create failed: ${e.stderr || ''}${e.stdout || ''}${e.message}`)
  }
  const deadline = Date.now() + 20000
  for (const n of nodes) {
    for (;;) {
      let info = ''
      try {
        info = certs
          ? execFileSync('redis-cli', [...cliTls, '-p', String(n.port), 'CLUSTER', 'INFO'], { encoding: 'utf8', timeout: 3000, stdio: ['ignore', 'pipe', 'pipe'] })
          : await respCommand(n.port, ['CLUSTER', 'INFO'])
      } catch {}
      if (info.includes('cluster_state:ok')) break
      if (Date.now() > deadline) throw new Error(`cluster node ${n.port} not ok within 20 s: ${info}`)
      await sleep(100)
    }
  }
  const url = (n) => `${certs ? 'rediss' : 'redis'}://127.0.0.1:${n.port}`
  const cluster = {
    mode: 'cluster',
    nodes,
    certs,
    env: {
      REDIS: nodes.slice(0, 2).map(url).join(','),
      REDIS_CLUSTER: 'true',
      ...(certs ? { REDIS_TLS_CA_FILE: certs.ca } : {})
    },
    /** a node-redis cluster client */
    async client () {
      const c = createCluster({ rootNodes: nodes.map((n) => ({ url: url(n) })) })
      c.on('error', () => {})
      await c.connect()
      return c
    },
    /** a plain client of one node */
    async nodeClient (n) {
      const c = createClient({ url: url(n), socket: { reconnectStrategy: false } })
      c.on('error', () => {})
      await c.connect()
      return c
    },
    /** node id of each node */
    async nodeIds () {
      const ids = []
      for (const n of nodes) {
        const c = await cluster.nodeClient(n)
        try { ids.push(await c.sendCommand(['CLUSTER', 'MYID'])) } finally { await c.disconnect() }
      }
      return ids
    },
    describe: () => `Redis Cluster of ${nodes.length} masters on ports ${nodes.map((n) => n.port).join(',')}; logs in ${dir}`,
    async stop () { for (const n of nodes) await n.kill() },
    dir
  }
  return cluster
}

/** Starts the deployment `mode` names (not `standalone`). */
export async function startTopology (mode, opts = {}) {
  if (mode === 'tls') return startTlsRedis(opts)
  if (mode === 'sentinel') return startSentinelSet(opts)
  if (mode === 'cluster') return startCluster(opts)
  throw new Error(`E2E_REDIS_MODE: expected one of ${MODES.join(', ')}, got ${JSON.stringify(mode)}`)
}
