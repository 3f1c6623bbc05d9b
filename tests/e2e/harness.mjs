// Shared helpers for the y-redis real-client end-to-end suite.
//
// Environment:
//   Y_REDIS_BIN       path of the server binary
//                     (default: ${CARGO_TARGET_DIR:-<repo>/target}/debug/y-redis)
//   REDIS             redis URL (default redis://127.0.0.1:6379)
//   E2E_REDIS_MODE    standalone (default: the Redis of REDIS) | tls | sentinel | cluster:
//                     each test file starts that deployment itself
//                     (redis-topology.mjs) and every server, worker and the
//                     test's own client use it
//   E2E_KEEP_KEYS=1   do not delete the test's Redis keys at the end (debugging)
//   E2E_LOG=...       the servers' LOG filter (default info)
//
// Every test file creates one Harness with a random REDIS_PREFIX, so files can
// run in parallel against one Redis without seeing each other.

import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import crypto from 'node:crypto'
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'
import * as Y from 'yjs'
import WebSocket from 'ws'
import { WebsocketProvider } from 'y-websocket'
import * as decoding from 'lib0/decoding'
import * as encoding from 'lib0/encoding'
import { createClient, RESP_TYPES } from 'redis'
import { MODES, startTopology, freePort } from './redis-topology.mjs'

export { Y, WebSocket, WebsocketProvider, sleep, freePort }

const here = path.dirname(fileURLToPath(import.meta.url))
export const REPO_ROOT = path.resolve(here, '..', '..')
export const LOG_DIR = path.join(here, '.logs')
export const REDIS_URL = process.env.REDIS || 'redis://127.0.0.1:6379'
export const REDIS_MODE = process.env.E2E_REDIS_MODE || 'standalone'
if (!MODES.includes(REDIS_MODE)) throw new Error(`E2E_REDIS_MODE: expected one of ${MODES.join(', ')}, got ${JSON.stringify(REDIS_MODE)}`)

/** @type {Promise<any> | null} */
let topology = null
/** The deployment of E2E_REDIS_MODE, started once per test file (process); null for standalone. */
export async function redisTopology () {
  if (REDIS_MODE === 'standalone') return null
  if (!topology) {
    topology = startTopology(REDIS_MODE, { tag: `mode-${REDIS_MODE}` })
    topology.then((t) => console.log(`# E2E_REDIS_MODE=${REDIS_MODE}: ${t.describe()}`), () => {})
  }
  return topology
}

/** Settings naming the Redis of this run, for y-redis processes. */
export async function redisEnv () {
  const t = await redisTopology()
  return t ? { ...t.env } : { REDIS: REDIS_URL }
}

// many providers each add a process 'exit' listener
process.setMaxListeners(200)

export function binaryPath () {
  if (process.env.Y_REDIS_BIN) return path.resolve(REPO_ROOT, process.env.Y_REDIS_BIN)
  const target = process.env.CARGO_TARGET_DIR
    ? path.resolve(REPO_ROOT, process.env.CARGO_TARGET_DIR)
    : path.join(REPO_ROOT, 'target')
  return path.join(target, 'debug', 'y-redis')
}

/** Throws a readable error when the server binary has not been built. */
export function assertBinary () {
  const bin = binaryPath()
  let st = null
  try { st = fs.statSync(bin) } catch {}
  if (!st || !st.isFile()) {
    throw new Error(
      `y-redis server binary not found at ${bin}.\n` +
      '  Build it first: (cd ' + REPO_ROOT + ' && cargo build)\n' +
      '  or point Y_REDIS_BIN at an existing binary.')
  }
  try { fs.accessSync(bin, fs.constants.X_OK) } catch {
    throw new Error(`y-redis server binary at ${bin} is not executable`)
  }
  return bin
}

export const randomHex = (n = 6) => crypto.randomBytes(n).toString('hex')

/** Redis key of a room stream, exactly as @y/redis computes it. */
export const roomStreamKey = (prefix, room, docid = 'index') =>
  `${prefix}:room:${encodeURIComponent(room)}:${encodeURIComponent(docid)}`

/** Buckets of the Redis Cluster layout (crates/protocol/src/names.rs). */
export const CLUSTER_BUCKETS = 32

/** A room's bucket in the cluster layout: FNV-1a 32 of `enc(room):enc(docid)` mod 32. */
export function roomBucket (room, docid = 'index') {
  let h = 0x811c9dc5
  for (const b of Buffer.from(`${encodeURIComponent(room)}:${encodeURIComponent(docid)}`)) {
    h ^= b
    h = Math.imul(h, 0x01000193) >>> 0
  }
  return h % CLUSTER_BUCKETS
}

/** Redis key of a room stream in the cluster layout (ARCHITECTURE.md, "Redis Cluster layout"). */
export const clusterRoomStreamKey = (prefix, room, docid = 'index') =>
  `${prefix}:{b${roomBucket(room, docid)}}:room:${encodeURIComponent(room)}:${encodeURIComponent(docid)}`

/** The worker queue holding the task of a room stream: PREFIX:worker, or its bucket's queue. */
export function workerQueueOf (prefix, streamKey) {
  const m = /^[^:]*:(\{b\d+\}):room:/.exec(streamKey)
  return m ? `${prefix}:${m[1]}:worker` : `${prefix}:worker`
}


const tryConnect = (port) => new Promise((resolve) => {
  const sock = net.connect({ port, host: '127.0.0.1' })
  const done = (ok) => { sock.removeAllListeners(); sock.destroy(); resolve(ok) }
  sock.once('connect', () => done(true))
  sock.once('error', () => done(false))
  sock.setTimeout(1000, () => done(false))
})

export function tailFile (file, lines = 40) {
  try {
    const all = fs.readFileSync(file, 'utf8').split('\n')
    return all.slice(-lines).join('\n')
  } catch (e) {
    return `(could not read ${file}: ${e.message})`
  }
}

/**
 * Wait until `pred()` returns truthy. `message` may be a function producing
 * diagnostics at timeout time.
 * @template T
 * @param {() => T | Promise<T>} pred
 * @param {{ timeout?: number, interval?: number, message?: string | (() => string) }} [opts]
 * @return {Promise<T>}
 */
export async function waitFor (pred, { timeout = 10000, interval = 25, message = 'condition' } = {}) {
  const start = Date.now()
  let lastErr = null
  for (;;) {
    try {
      const v = await pred()
      if (v) return v
      lastErr = null
    } catch (e) { lastErr = e }
    if (Date.now() - start > timeout) {
      const msg = typeof message === 'function' ? message() : message
      throw new Error(`timed out after ${timeout} ms waiting for: ${msg}` +
        (lastErr ? `\n  last error: ${lastErr.stack || lastErr}` : ''))
    }
    await sleep(interval)
  }
}

/** Await an event-ish promise with a timeout. */
export async function withTimeout (promise, ms, message) {
  let t
  const timeout = new Promise((_resolve, reject) => {
    t = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${message}`)), ms)
  })
  try { return await Promise.race([promise, timeout]) } finally { clearTimeout(t) }
}

// ---------------------------------------------------------------------------
// Server processes

let procCounter = 0
/** @type {Set<ServerProc>} */
const liveProcs = new Set()
process.on('exit', () => {
  for (const p of liveProcs) { try { p.proc.kill('SIGKILL') } catch {} }
})

export class ServerProc {
  constructor ({ proc, port, logPath, name }) {
    this.proc = proc
    this.port = port
    this.logPath = logPath
    this.name = name
    this.url = `ws://127.0.0.1:${port}`
    /** @type {{code: number|null, signal: string|null} | null} */
    this.exitStatus = null
    this.exited = new Promise((resolve) => {
      proc.once('exit', (code, signal) => {
        this.exitStatus = { code, signal }
        liveProcs.delete(this)
        resolve(this.exitStatus)
      })
    })
  }

  get running () { return this.exitStatus === null }

  /** SIGTERM, then SIGKILL after `graceMs`. Resolves with the exit status. */
  async stop (graceMs = 5000) {
    if (!this.running) return this.exitStatus
    try { this.proc.kill('SIGTERM') } catch {}
    let t
    const forced = new Promise((resolve) => {
      t = setTimeout(() => { try { this.proc.kill('SIGKILL') } catch {} ; resolve() }, graceMs)
    })
    await Promise.race([this.exited, forced])
    clearTimeout(t)
    return this.exited
  }

  describe () {
    const st = this.exitStatus ? ` exited(code=${this.exitStatus.code}, signal=${this.exitStatus.signal})` : ' running'
    return `[${this.name} port ${this.port}${st}] log: ${this.logPath}`
  }
}

/**
 * Start `y-redis <subcommand>` and wait until its port accepts TCP connections.
 * `workDir` is the process's cwd and holds its filesystem storage (STORAGE_DIR);
 * servers of one fleet share it.
 * `bin` runs another program taking y-redis's configuration (an example);
 * `subcommand` null passes it no arguments.
 * @param {{ prefix: string, name?: string, env?: Record<string,string>, subcommand?: string|null, tag?: string, workDir?: string, readyLog?: RegExp|null, bin?: string }} opts
 */
export async function startServer ({ prefix, name = 'server', env = {}, subcommand = 'server', tag = 'e2e', workDir = path.join(LOG_DIR, `${tag}-${prefix}`), readyLog = null, bin = assertBinary() }) {
  const port = await freePort()
  fs.mkdirSync(workDir, { recursive: true })
  const logPath = path.join(LOG_DIR, `${tag}-${prefix}-${name}-${++procCounter}-${port}.log`)
  const fd = fs.openSync(logPath, 'a')
  // a test naming its own Redis (a private one) gets none of the mode's settings
  const redisSettings = env.REDIS ? { REDIS: env.REDIS } : await redisEnv()
  const shownRedis = redisSettings.REDIS.replace(/\/\/[^@/]*@/, '//<credentials>@')
  fs.writeSync(fd, `# ${bin} ${subcommand}  PORT=${port} REDIS=${shownRedis} E2E_REDIS_MODE=${REDIS_MODE} REDIS_PREFIX=${prefix}\n`)
  const childEnv = { ...process.env }
  // keep the developer's storage/auth settings out of the test servers
  for (const k of Object.keys(childEnv)) {
    if (/^(S3_|POSTGRES|AUTH_|YDOC_UPDATE_CALLBACK|REDIS_TASK_DEBOUNCE|REDIS_MIN_MESSAGE_LIFETIME|REDIS_TLS_|REDIS_SENTINEL|STORAGE_DIR|HOST$|WS_|WORKER_|MAX_|AWARENESS_|TRUSTED_PROXIES)/.test(k)) delete childEnv[k]
  }
  Object.assign(childEnv, {
    PORT: String(port),
    ...redisSettings,
    REDIS_PREFIX: prefix,
    LOG: process.env.E2E_LOG || 'info',
    RUST_BACKTRACE: '1',
    AUTH_DISABLED: 'true',
    STORAGE_DIR: path.join(workDir, 'data'),
    // every test client connects from 127.0.0.1: the per-address upgrade
    // rate is tested on its own (abuse.test.mjs), not by every burst here
    MAX_UPGRADES_PER_IP_PER_SECOND: '100000',
    ...env
  })
  // run in a gitignored scratch dir so a stray .env in the repo is not picked up
  const proc = spawn(bin, subcommand ? [subcommand] : [], { env: childEnv, cwd: workDir, stdio: ['ignore', fd, fd] })
  fs.closeSync(fd)
  const sp = new ServerProc({ proc, port, logPath, name })
  liveProcs.add(sp)
  let spawnError = null
  proc.once('error', (e) => { spawnError = e })
  const deadline = Date.now() + 30000
  for (;;) {
    if (spawnError) throw new Error(`failed to spawn ${bin}: ${spawnError.message}`)
    if (!sp.running) {
      throw new Error(`${bin} ${subcommand} exited before accepting connections ` +
        `(code=${sp.exitStatus.code}, signal=${sp.exitStatus.signal}).\n` +
        `log ${logPath}:\n${tailFile(logPath)}`)
    }
    if (await tryConnect(port)) return sp
    if (readyLog && readyLog.test(tailFile(logPath, 200))) return sp
    if (Date.now() > deadline) {
      await sp.stop(1000)
      throw new Error(`${bin} ${subcommand} did not accept TCP connections on port ${port}` +
        (readyLog ? ` nor log ${readyLog}` : '') + ' within 30 s.\n' +
        `log ${logPath}:\n${tailFile(logPath)}`)
    }
    await sleep(100)
  }
}

/** Small worker timings for tests (ARCHITECTURE.md, "The worker's task protocol"). */
export const FAST_WORKER_ENV = Object.freeze({
  REDIS_TASK_DEBOUNCE: '300',
  REDIS_MIN_MESSAGE_LIFETIME: '1000',
  WORKER_IDLE_MS: '100'
})

/**
 * Start `y-redis worker`. It is ready when it logs "worker running" or when
 * its health port (WORKER_PORT, = PORT here) accepts connections.
 * @param {{ prefix: string, name?: string, env?: Record<string,string>, tag?: string, workDir?: string }} opts
 */
export async function startWorker ({ prefix, name = 'worker', env = {}, tag = 'e2e', workDir }) {
  const healthPort = await freePort()
  const worker = await startServer({
    prefix,
    name,
    tag,
    workDir,
    subcommand: 'worker',
    readyLog: /worker running/,
    env: { WORKER_PORT: String(healthPort), ...FAST_WORKER_ENV, ...env }
  })
  // the port of its /healthz, /readyz and /metrics
  worker.healthPort = healthPort
  return worker
}

/** SIGKILL a process and wait for it to be gone. */
export async function killHard (sp, timeout = 10000) {
  if (!sp.running) return sp.exitStatus
  try { sp.proc.kill('SIGKILL') } catch {}
  return withTimeout(sp.exited, timeout, `${sp.describe()} to exit after SIGKILL`)
}

/** Lines of a process log matching `re`. */
export function grepLog (sp, re) {
  try {
    return fs.readFileSync(sp.logPath, 'utf8').split('\n').filter((l) => re.test(l))
  } catch { return [] }
}

// ---------------------------------------------------------------------------
// Clients

export class Client {
  /**
   * @param {ServerProc} server
   * @param {string} room  room name as it appears raw in the URL path
   * @param {{ doc?: Y.Doc, name?: string, connect?: boolean, params?: Record<string,string> }} [opts]
   */
  constructor (server, room, { doc = new Y.Doc(), name = 'client', connect = true, params = {} } = {}) {
    this.server = server
    this.room = room
    this.name = name
    this.doc = doc
    this.text = doc.getText('text')
    this.map = doc.getMap('map')
    /** @type {Array<{code: number, reason: string} | null>} */
    this.closeEvents = []
    this.provider = new WebsocketProvider(server.url, room, doc, {
      WebSocketPolyfill: /** @type {any} */ (WebSocket),
      disableBc: true,
      connect,
      params
    })
    this.provider.on('connection-close', (event) => {
      this.closeEvents.push(event ? { code: event.code, reason: String(event.reason ?? '') } : null)
    })
    this.awareness = this.provider.awareness
    this.destroyed = false
  }

  get clientID () { return this.doc.clientID }

  async synced (timeout = 15000) {
    await waitFor(() => this.provider.synced, {
      timeout,
      message: () => `${this.name} (${this.server.describe()}, room ${JSON.stringify(this.room)}) to sync; ` +
        `wsconnected=${this.provider.wsconnected} closeEvents=${JSON.stringify(this.closeEvents)}`
    })
    return this
  }

  /** Content derived from Y.encodeStateAsUpdate, independent of this doc instance. */
  snapshot () {
    const d = new Y.Doc()
    Y.applyUpdate(d, Y.encodeStateAsUpdate(this.doc))
    const s = { text: d.getText('text').toString(), map: d.getMap('map').toJSON() }
    d.destroy()
    return s
  }

  /** Abruptly kill the socket (no close frame) and do not reconnect. */
  terminate () {
    this.provider.shouldConnect = false
    const ws = /** @type {any} */ (this.provider.ws)
    if (ws) ws.terminate()
  }

  destroy () {
    if (this.destroyed) return
    this.destroyed = true
    try { this.provider.destroy() } catch {}
    try { this.doc.destroy() } catch {}
  }
}

/**
 * A raw `ws` socket (no Yjs client) for protocol-level tests.
 * Collects received binary frames and the close event.
 */
export class RawSocket {
  constructor (server, room) {
    this.ws = new WebSocket(`${server.url}/${room}`)
    this.ws.binaryType = 'nodebuffer'
    /** @type {Buffer[]} */
    this.frames = []
    /** @type {{code: number, reason: string} | null} */
    this.closeEvent = null
    this.closed = new Promise((resolve) => {
      this.ws.on('close', (code, reason) => {
        this.closeEvent = { code, reason: reason.toString('utf8') }
        resolve(this.closeEvent)
      })
    })
    this.ws.on('message', (data, isBinary) => { if (isBinary) this.frames.push(Buffer.from(data)) })
    this.ws.on('error', () => {})
    this.opened = new Promise((resolve, reject) => {
      this.ws.once('open', resolve)
      this.ws.once('unexpected-response', (_req, res) => reject(new Error(`upgrade refused: HTTP ${res.statusCode}`)))
      this.ws.once('close', () => reject(new Error('closed before open')))
    })
  }

  async open (timeout = 10000) { return withTimeout(this.opened, timeout, 'raw websocket to open') }
  send (data, opts) { this.ws.send(data, opts) }
  terminate () { try { this.ws.terminate() } catch {} }
}

// ---------------------------------------------------------------------------
// Redis

const BUF = { typeMapping: { [RESP_TYPES.BLOB_STRING]: Buffer } }

export async function connectRedis () {
  const t = await redisTopology()
  if (t) return t.client()
  const client = createClient({ url: REDIS_URL })
  client.on('error', () => {})
  try {
    await withTimeout(client.connect(), 5000, `connect to Redis at ${REDIS_URL}`)
  } catch (e) {
    throw new Error(`cannot reach Redis at ${REDIS_URL} (set REDIS=redis://host:port): ${e.message}`)
  }
  return client
}

/** Run a command and get binary-safe replies (bulk strings as Buffers). */
export const redisRaw = (client, args) => client.masters
  // a node-redis cluster client routes by the first key (args[1] in the commands used here)
  ? client.sendCommand(args[1], false, args, BUF)
  : client.sendCommand(args, BUF)

/**
 * XRANGE key - + with raw bytes.
 * @return {Promise<Array<{ id: string, fields: Buffer[] }>>}
 */
export async function xrangeRaw (client, key) {
  const r = await redisRaw(client, ['XRANGE', key, '-', '+'])
  return (r || []).map(([id, fields]) => ({ id: id.toString('utf8'), fields }))
}

/** SCAN for `pattern`; on a node-redis cluster client, over every master. */
export async function scanKeys (client, pattern) {
  const keys = []
  const nodes = client.masters ? await Promise.all(client.masters.map((m) => client.nodeClient(m))) : [client]
  for (const node of nodes) {
    for await (const batch of node.scanIterator({ MATCH: pattern, COUNT: 500 })) {
      keys.push(...(Array.isArray(batch) ? batch : [batch]))
    }
  }
  return keys
}

export async function deletePrefix (client, prefix) {
  const keys = await scanKeys(client, `${prefix}*`)
  // a cluster refuses a DEL across slots
  const step = client.masters ? 1 : 100
  for (let i = 0; i < keys.length; i += step) await client.del(keys.slice(i, i + step))
  return keys.length
}

// ---------------------------------------------------------------------------
// y-websocket message decoding (for checking what lands in Redis)

/**
 * Strictly decode one y-websocket message as stored in a room stream.
 * Returns a description or throws if the bytes are not an allowed shape:
 * a sync Update (0, 2, varUint8Array valid Yjs update v1) or an awareness
 * message (1, varUint8Array valid awareness update with JSON states).
 * @param {Uint8Array} m
 */
export function decodeStreamMessage (m) {
  const dec = decoding.createDecoder(m)
  const type = decoding.readVarUint(dec)
  if (type === 0) {
    const sub = decoding.readVarUint(dec)
    if (sub !== 2) throw new Error(`sync message with subtype ${sub} (only 2 = Update is allowed in a stream)`)
    const update = decoding.readVarUint8Array(dec)
    if (decoding.hasContent(dec)) throw new Error(`${dec.arr.length - dec.pos} trailing bytes after the update`)
    const d = new Y.Doc()
    try { Y.applyUpdate(d, update) } finally { d.destroy() }
    return { type: 'update', update }
  }
  if (type === 1) {
    const payload = decoding.readVarUint8Array(dec)
    if (decoding.hasContent(dec)) throw new Error(`${dec.arr.length - dec.pos} trailing bytes after the awareness update`)
    const ad = decoding.createDecoder(payload)
    const n = decoding.readVarUint(ad)
    const clients = []
    for (let i = 0; i < n; i++) {
      const clientID = decoding.readVarUint(ad)
      const clock = decoding.readVarUint(ad)
      const json = decoding.readVarString(ad)
      clients.push({ clientID, clock, state: JSON.parse(json) })
    }
    if (decoding.hasContent(ad)) throw new Error('trailing bytes in awareness update')
    return { type: 'awareness', clients }
  }
  throw new Error(`message type ${type} is not allowed in a room stream`)
}

/** The exact y-websocket Update frame a client sends for `update`. */
export function encodeSyncUpdate (update) {
  const enc = encoding.createEncoder()
  encoding.writeVarUint(enc, 0)
  encoding.writeVarUint(enc, 2)
  encoding.writeVarUint8Array(enc, update)
  return Buffer.from(encoding.toUint8Array(enc))
}

// ---------------------------------------------------------------------------
// Per-file harness

export class Harness {
  /**
   * @param {string} tag short name of the test file, used in log names
   * @param {{ env?: Record<string,string> }} [opts] env for every process of this harness (e.g. storage)
   */
  constructor (tag, { env = {} } = {}) {
    this.tag = tag
    this.prefix = `e2e-${randomHex(6)}`
    /** env given to every server and worker (storage settings, ...) */
    this.env = { ...env }
    /** @type {ServerProc[]} */
    this.servers = []
    /** @type {ServerProc[]} */
    this.workers = []
    /** extra cleanup run at teardown (storage backends, helper servers), last added first */
    this.cleanups = []
    /** @type {Set<Client>} */
    this.clients = new Set()
    /** @type {Set<RawSocket>} */
    this.raws = new Set()
    this.redis = null
    this.failed = false
    /** cwd + filesystem storage shared by this file's servers */
    this.workDir = path.join(LOG_DIR, `${tag}-${this.prefix}`)
  }

  /** Call from `before`. Checks the binary and Redis, starts `nServers` servers. */
  async setup (nServers = 2, env = {}) {
    assertBinary()
    this.redis = await connectRedis()
    for (let i = 0; i < nServers; i++) await this.startServer(`s${i + 1}`, env)
    return this
  }

  async startServer (name = `s${this.servers.length + 1}`, env = {}) {
    const s = await startServer({ prefix: this.prefix, name, env: { ...this.env, ...env }, tag: this.tag, workDir: this.workDir })
    this.servers.push(s)
    return s
  }

  /** Start a `y-redis worker` with this harness's env and fast timings. */
  async startWorker (name = `w${this.workers.length + 1}`, env = {}) {
    const w = await startWorker({ prefix: this.prefix, name, env: { ...this.env, ...env }, tag: this.tag, workDir: this.workDir })
    this.workers.push(w)
    return w
  }

  /** every process this harness started (servers and workers) */
  get procs () { return [...this.servers, ...this.workers] }

  /** @param {ServerProc} server @param {string} room */
  client (server, room, opts = {}) {
    const c = new Client(server, room, { name: `client${this.clients.size + 1}`, ...opts })
    this.clients.add(c)
    return c
  }

  raw (server, room) {
    const r = new RawSocket(server, room)
    this.raws.add(r)
    return r
  }

  /** the room's stream key in the layout of this run (cluster or not) */
  roomKey (room) {
    return REDIS_MODE === 'cluster' ? clusterRoomStreamKey(this.prefix, room) : roomStreamKey(this.prefix, room)
  }

  /** the worker queue holding the task of `streamKey` */
  workerKeyOf (streamKey) { return workerQueueOf(this.prefix, streamKey) }

  logInfo () {
    return this.procs.map((s) => s.describe()).join('\n')
  }

  logTails (lines = 30) {
    return this.procs.map((s) => `----- ${s.describe()} (last ${lines} lines)\n${tailFile(s.logPath, lines)}`).join('\n')
  }

  /**
   * Wrap a test body: on failure, append server log paths and tails to the error.
   * @param {(t: any) => Promise<void>} fn
   */
  wrap (fn) {
    return async (t) => {
      try {
        await fn(t)
      } catch (e) {
        this.failed = true
        if (e && typeof e === 'object' && this.procs.length > 0) {
          const extra = `\n\nRedis prefix: ${this.prefix}\nserver logs:\n${this.logInfo()}\n${this.logTails()}`
          try { e.message = String(e.message) + extra } catch {}
          if (typeof e.stack === 'string') e.stack = e.stack + extra
        }
        throw e
      }
    }
  }

  destroyClients () {
    for (const c of this.clients) c.destroy()
    this.clients.clear()
    for (const r of this.raws) r.terminate()
    this.raws.clear()
  }

  /** Call from `after`. Server logs are kept only when a test failed (or E2E_KEEP_LOGS=1). */
  async teardown () {
    this.destroyClients()
    await Promise.all(this.procs.map((s) => s.stop(5000)))
    for (const fn of this.cleanups.reverse()) {
      try { await fn(this.failed) } catch (e) { console.error(`cleanup failed: ${e.stack || e}`) }
    }
    this.cleanups = []
    if (!this.failed && !process.env.E2E_KEEP_LOGS) {
      for (const s of this.procs) { try { fs.unlinkSync(s.logPath) } catch {} }
      try { fs.rmSync(this.workDir, { recursive: true, force: true }) } catch {}
    }
    if (this.redis) {
      if (!process.env.E2E_KEEP_KEYS) {
        try { await deletePrefix(this.redis, this.prefix) } catch {}
      }
      try { await this.redis.quit() } catch {}
      this.redis = null
    }
  }
}

/** JSON with object keys sorted: Y.Map key order depends on integration order, so compare this. */
export function canonicalJSON (v) {
  return JSON.stringify(v, (_k, x) => (x && typeof x === 'object' && !Array.isArray(x))
    ? Object.fromEntries(Object.keys(x).sort().map((k) => [k, x[k]]))
    : x)
}

/** Short fingerprint of a snapshot for diagnostics. */
export function fingerprint (snap) {
  const h = (s) => crypto.createHash('sha1').update(s).digest('hex').slice(0, 10)
  return `text[len=${snap.text.length} sha1=${h(snap.text)}] map[keys=${Object.keys(snap.map).length} sha1=${h(canonicalJSON(snap.map))}]`
}

/** Deterministic pseudo-random ASCII text of length n. */
export function pseudoText (n, seed = 1) {
  const alphabet = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 \n.,;-'
  let x = seed >>> 0 || 1
  const out = Buffer.alloc(n)
  for (let i = 0; i < n; i++) {
    x ^= x << 13; x >>>= 0
    x ^= x >>> 17
    x ^= x << 5; x >>>= 0
    out[i] = alphabet.charCodeAt(x % alphabet.length)
  }
  return out.toString('latin1')
}
