// Fault-injection helpers for the fault-*.test.mjs files: a private
// redis-server the test can SIGKILL and restart (empty) on the same port, a
// TCP proxy that can be cut and restored, a round-robin TCP load balancer that
// skips dead backends, and small client helpers (markers, probes).
//
// Everything listens on 127.0.0.1 only. Each helper registers its processes
// and sockets so that a crashed test leaves nothing behind; tests kill only
// what they started, by PID.
//
// Environment:
//   REDIS_SERVER_BIN   redis-server binary (default: redis-server on PATH)

import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { spawn } from 'node:child_process'
import { createClient, RESP_TYPES } from 'redis'
import assert from 'node:assert/strict'
import { LOG_DIR, Y, freePort, randomHex, sleep, tailFile, waitFor, withTimeout, canonicalJSON, grepLog, fingerprint, decodeStreamMessage } from './harness.mjs'

// ---------------------------------------------------------------------------
// A private Redis

const liveRedis = new Set()
process.on('exit', () => { for (const r of liveRedis) { try { r.proc?.kill('SIGKILL') } catch {} } })

const pingRedis = (port) => new Promise((resolve) => {
  const sock = net.connect({ port, host: '127.0.0.1' })
  let buf = ''
  const done = (ok) => { sock.removeAllListeners(); sock.destroy(); resolve(ok) }
  sock.once('connect', () => sock.write('PING\r\n'))
  sock.on('data', (d) => { buf += d.toString('latin1'); if (buf.includes('\r\n')) done(buf.startsWith('+PONG')) })
  sock.once('error', () => done(false))
  sock.setTimeout(1000, () => done(false))
})

/**
 * A `redis-server` of this test alone, without persistence (`--save ""
 * --appendonly no`), so a restart brings it back empty. `kill()` SIGKILLs
 * it, `start()` starts it again on the same port.
 */
export class PrivateRedis {
  /** @param {{ tag?: string, args?: string[] }} [opts] `args`: more redis-server options */
  static async start ({ tag = 'redis', args = [] } = {}) {
    const r = new PrivateRedis(await freePort(), tag, args)
    await r.start()
    return r
  }

  constructor (port, tag, args = []) {
    this.args = args
    this.port = port
    this.url = `redis://127.0.0.1:${port}`
    this.dir = path.join(LOG_DIR, `${tag}-redis-${port}-${randomHex(3)}`)
    this.logPath = `${this.dir}.log`
    /** @type {import('node:child_process').ChildProcess | null} */
    this.proc = null
    this.exited = Promise.resolve()
    this.starts = 0
  }

  get running () { return this.proc !== null && this.proc.exitCode === null && this.proc.signalCode === null }

  async start (timeout = 15000) {
    if (this.running) throw new Error('private redis already running')
    fs.mkdirSync(this.dir, { recursive: true })
    const bin = process.env.REDIS_SERVER_BIN || 'redis-server'
    const deadline = Date.now() + timeout
    // the port was just released by our own SIGKILL: retry a bind failure
    for (let attempt = 0; ; attempt++) {
      const fd = fs.openSync(this.logPath, 'a')
      fs.writeSync(fd, `# ${bin} --port ${this.port} (start #${++this.starts})\n`)
      const proc = spawn(bin, ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
        '--daemonize', 'no', '--dir', this.dir, '--protected-mode', 'no', ...this.args], { stdio: ['ignore', fd, fd] })
      fs.closeSync(fd)
      this.proc = proc
      this.exited = new Promise((resolve) => proc.once('exit', resolve))
      liveRedis.add(this)
      let spawnError = null
      proc.once('error', (e) => { spawnError = e })
      for (;;) {
        if (spawnError) throw new Error(`cannot start ${bin}: ${spawnError.message}`)
        if (!this.running) break
        if (await pingRedis(this.port)) return this
        if (Date.now() > deadline) {
          await this.kill()
          throw new Error(`private redis on port ${this.port} did not answer PING within ${timeout} ms\n${tailFile(this.logPath)}`)
        }
        await sleep(50)
      }
      if (Date.now() > deadline || attempt > 20) {
        throw new Error(`private redis on port ${this.port} exited at start\n${tailFile(this.logPath)}`)
      }
      await sleep(200)
    }
  }

  /** SIGKILL (no shutdown, nothing saved) and wait until it is gone. */
  async kill () {
    if (!this.proc) return
    if (this.running) { try { this.proc.kill('SIGKILL') } catch {} }
    await withTimeout(this.exited, 10000, 'private redis to exit after SIGKILL')
    liveRedis.delete(this)
  }

  /** A node-redis client of this Redis (reconnects by itself after a restart). */
  async client () {
    const c = createClient({ url: this.url, socket: { reconnectStrategy: (n) => Math.min(50 * (n + 1), 500) } })
    c.on('error', () => {})
    await withTimeout(c.connect(), 5000, `connect to private redis ${this.url}`)
    return c
  }

  /** Stop and remove its scratch dir and log (kept when `keepLog`). */
  async close (keepLog = false) {
    await this.kill()
    try { fs.rmSync(this.dir, { recursive: true, force: true }) } catch {}
    if (!keepLog && !process.env.E2E_KEEP_LOGS) { try { fs.unlinkSync(this.logPath) } catch {} }
  }
}

// ---------------------------------------------------------------------------
// TCP proxy

const liveServers = new Set()
process.on('exit', () => {
  for (const s of liveServers) {
    try { s.server.close() } catch {}
    for (const c of s.sockets) { try { c.destroy() } catch {} }
  }
})

async function listenOn (server, port, timeout = 10000) {
  const deadline = Date.now() + timeout
  for (;;) {
    try {
      await new Promise((resolve, reject) => {
        const onError = (e) => { server.off('listening', onOk); reject(e) }
        const onOk = () => { server.off('error', onError); resolve() }
        server.once('error', onError)
        server.once('listening', onOk)
        server.listen(port, '127.0.0.1')
      })
      return
    } catch (e) {
      if (e.code !== 'EADDRINUSE' || Date.now() > deadline) throw e
      await sleep(100)
    }
  }
}

const closeServer = (server) => new Promise((resolve) => {
  if (!server.listening) { resolve(); return }
  server.close(() => resolve())
})

/**
 * A TCP proxy on 127.0.0.1:<port> forwarding to 127.0.0.1:<targetPort>.
 *   cut('refuse')    destroys every connection and stops listening: new connections are refused
 *   cut('blackhole') destroys every connection; new connections are accepted but nothing is
 *                    forwarded or answered (a partition: peers only notice through timeouts)
 *   restore()        forwards again (same port)
 */
export class TcpProxy {
  /** @param {number} targetPort @param {{ name?: string }} [opts] */
  static async start (targetPort, { name = 'proxy' } = {}) {
    const p = new TcpProxy(targetPort, await freePort(), name)
    await listenOn(p.server, p.port)
    return p
  }

  constructor (targetPort, port, name) {
    this.name = name
    this.targetPort = targetPort
    this.port = port
    /** 'up' | 'refuse' | 'blackhole' */
    this.state = 'up'
    /** @type {Set<net.Socket>} */
    this.sockets = new Set()
    this.accepted = 0
    this.server = net.createServer((c) => this.onConnection(c))
    this.server.on('error', () => {})
    liveServers.add(this)
  }

  onConnection (client) {
    this.accepted++
    this.track(client)
    client.setNoDelay(true)
    client.on('error', () => {})
    if (this.state !== 'up') return // blackhole: hold it, never answer
    const upstream = net.connect({ host: '127.0.0.1', port: this.targetPort })
    this.track(upstream)
    upstream.setNoDelay(true)
    const kill = () => { client.destroy(); upstream.destroy() }
    upstream.on('error', kill)
    client.on('error', kill)
    client.on('close', kill)
    upstream.on('close', kill)
    client.pipe(upstream)
    upstream.pipe(client)
  }

  track (sock) {
    this.sockets.add(sock)
    sock.once('close', () => this.sockets.delete(sock))
  }

  destroyAll () {
    for (const s of this.sockets) s.destroy()
    this.sockets.clear()
  }

  /** @param {'refuse' | 'blackhole'} mode */
  async cut (mode = 'refuse') {
    this.state = mode
    if (mode === 'refuse') {
      const closed = closeServer(this.server)
      this.destroyAll()
      await closed
    } else {
      this.destroyAll()
    }
  }

  async restore () {
    const was = this.state
    this.state = 'up'
    // connections held by a blackhole never got an upstream: drop them
    this.destroyAll()
    if (was === 'refuse' || !this.server.listening) await listenOn(this.server, this.port)
  }

  async close () {
    this.state = 'refuse'
    const closed = closeServer(this.server)
    this.destroyAll()
    await closed
    liveServers.delete(this)
  }
}

// ---------------------------------------------------------------------------
// Load balancer

/**
 * A TCP load balancer on 127.0.0.1:<port>: each new connection goes to the
 * next backend (round-robin); a backend that refuses the connection is
 * skipped, and the client is cut only when every backend refuses.
 */
export class LoadBalancer {
  /** @param {number[]} backends ports */
  static async start (backends) {
    const lb = new LoadBalancer(backends, await freePort())
    await listenOn(lb.server, lb.port)
    return lb
  }

  constructor (backends, port) {
    this.backends = [...backends]
    this.port = port
    this.url = `ws://127.0.0.1:${port}`
    this.next = 0
    /** @type {Set<net.Socket>} */
    this.sockets = new Set()
    /** backend port -> connections routed there */
    this.routed = new Map()
    /** client's port (its socket's localPort) -> backend port, while connected */
    this.routes = new Map()
    this.skipped = 0
    this.server = net.createServer((c) => this.onConnection(c))
    this.server.on('error', () => {})
    liveServers.add(this)
  }

  track (sock) {
    this.sockets.add(sock)
    sock.once('close', () => this.sockets.delete(sock))
  }

  onConnection (client) {
    this.track(client)
    client.setNoDelay(true)
    client.pause()
    let clientGone = false
    client.on('error', () => {})
    client.once('close', () => { clientGone = true })
    const start = this.next++
    const tryBackend = (i) => {
      if (clientGone) return
      if (i >= this.backends.length) { client.destroy(); return }
      const port = this.backends[(start + i) % this.backends.length]
      const upstream = net.connect({ host: '127.0.0.1', port })
      let connected = false
      upstream.once('connect', () => {
        connected = true
        if (clientGone) { upstream.destroy(); return }
        this.track(upstream)
        upstream.setNoDelay(true)
        this.routed.set(port, (this.routed.get(port) || 0) + 1)
        const clientPort = client.remotePort
        this.routes.set(clientPort, port)
        client.once('close', () => { if (this.routes.get(clientPort) === port) this.routes.delete(clientPort) })
        const kill = () => { client.destroy(); upstream.destroy() }
        upstream.on('error', kill)
        upstream.on('close', kill)
        client.on('close', kill)
        client.pipe(upstream)
        upstream.pipe(client)
        client.resume()
      })
      upstream.once('error', () => {
        if (connected) return
        upstream.destroy()
        this.skipped++
        tryBackend(i + 1)
      })
    }
    tryBackend(0)
  }

  async close () {
    const closed = closeServer(this.server)
    for (const s of this.sockets) s.destroy()
    this.sockets.clear()
    await closed
    liveServers.delete(this)
  }
}

// ---------------------------------------------------------------------------
// Probes and client helpers

/** GET http://127.0.0.1:<port><path> → { status, body } (status 0 when the port does not answer). */
export async function httpGet (port, p = '/readyz', timeout = 5000) {
  try {
    const res = await fetch(`http://127.0.0.1:${port}${p}`, { signal: AbortSignal.timeout(timeout) })
    const body = await res.text()
    return { status: res.status, body }
  } catch (e) {
    return { status: 0, body: String(e.message || e) }
  }
}

/** Binary-safe XRANGE on any node-redis client → [{ id, m }] (field `m` of each entry). */
export async function streamMessages (client, key) {
  const r = await client.sendCommand(['XRANGE', key, '-', '+'], { typeMapping: { [RESP_TYPES.BLOB_STRING]: Buffer } })
  return (r || []).map(([id, fields]) => {
    let m = null
    for (let i = 0; i + 1 < fields.length; i += 2) if (fields[i].toString() === 'm') m = fields[i + 1]
    return { id: id.toString(), m }
  })
}

export const sameContent = (a, b) => a.text === b.text && canonicalJSON(a.map) === canonicalJSON(b.map)

/**
 * After a fault (`what`: "the restore", "the failover"): every server's
 * /readyz answers 200 again, every entry of the room's stream decodes, and a
 * fresh client on each server gets `final` in full.
 */
export async function assertRecovered (h, room, final, what) {
  for (const s of h.servers) {
    await waitFor(async () => (await httpGet(s.port)).status === 200, { timeout: 10000, interval: 100, message: `${s.name} /readyz to answer 200 after ${what}` })
  }
  for (const e of await streamMessages(h.redis, h.roomKey(room))) {
    assert.doesNotThrow(() => decodeStreamMessage(e.m), `stream entry ${e.id} decodes`)
  }
  for (const s of h.servers) {
    const fresh = h.client(s, room, { name: `fresh-${s.name}` })
    await fresh.synced()
    await waitFor(() => sameContent(fresh.snapshot(), final), { timeout: 10000, message: () => `fresh client on ${s.name}: want ${fingerprint(final)} got ${fingerprint(fresh.snapshot())}` })
    fresh.destroy()
  }
}

/**
 * Keeps editing a set of harness Clients: every `interval` ms each client
 * appends (or prepends) a unique marker `[name:k]` to Y.Text `text` and sets
 * map key `name-k`, whether connected or not. `want` records every edit made.
 */
export class Editors {
  /** @param {import('./harness.mjs').Client[]} clients */
  constructor (clients, { interval = 60 } = {}) {
    this.clients = clients
    this.interval = interval
    /** @type {Array<{ marker: string, key: string, at: number, client: string, connected: boolean }>} */
    this.edits = []
    this.running = false
    this.loops = []
  }

  /** One edit by client `c` now. */
  edit (c, k) {
    const marker = `[${c.name}:${k}]`
    // at an end only: never inside another marker (Y.Text length, which
    // counts embeds that toString() leaves out)
    c.text.insert(k % 3 === 1 ? 0 : c.text.length, marker)
    c.map.set(`${c.name}-${k}`, k)
    this.edits.push({ marker, key: `${c.name}-${k}`, at: Date.now(), client: c.name, connected: !!c.provider.synced })
  }

  start () {
    this.running = true
    this.loops = this.clients.map(async (c, i) => {
      await sleep(i * 7)
      for (let k = 0; this.running && !c.destroyed; k++) {
        this.edit(c, k)
        await sleep(this.interval + ((k * 13 + i * 5) % 20))
      }
    })
    return this
  }

  async stop () {
    this.running = false
    await Promise.all(this.loops)
  }

  /** edits made up to `t` (ms timestamp) */
  before (t) { return this.edits.filter((e) => e.at <= t) }

  /** markers and keys of `edits` that `snap` lacks */
  missing (snap, edits = this.edits) {
    return edits.filter((e) => !snap.text.includes(e.marker) || !(e.key in snap.map))
  }
}

/**
 * Wait until every client holds every edit in `edits` and all have the same
 * content; returns the common snapshot.
 */
export async function waitConverged (clients, editors, { timeout = 30000, edits = editors.edits } = {}) {
  let snaps = []
  await waitFor(() => {
    snaps = clients.map((c) => c.snapshot())
    return snaps.every((s) => sameContent(s, snaps[0])) && editors.missing(snaps[0], edits).length === 0
  }, {
    timeout,
    interval: 50,
    message: () => 'clients to converge holding every edit:\n' + clients.map((c, i) => {
      const miss = editors.missing(snaps[i] || c.snapshot(), edits)
      return `  ${c.name}: synced=${c.provider.synced} text.len=${(snaps[i] || c.snapshot()).text.length} missing ${miss.length}/${edits.length} ` +
        `(${miss.slice(0, 5).map((e) => e.marker).join(' ')}) closes=${JSON.stringify(c.closeEvents.slice(-5))}`
    }).join('\n')
  })
  return snaps[0]
}

/** Content of a Y.Doc built from a whole-document update v1. */
export function contentOfUpdate (update) {
  const d = new Y.Doc()
  Y.applyUpdate(d, update)
  const out = { text: d.getText('text').toString(), map: d.getMap('map').toJSON() }
  d.destroy()
  return out
}

/**
 * What a worker's log says about failed rounds and restarts of its
 * persistence actors (for failure messages).
 * @param {import('./harness.mjs').ServerProc} w
 */
export function workerStory (w) {
  if (!w) return '(no worker)'
  const count = (re) => grepLog(w, re).length
  return `${count(/persisted document/)} persists, ${count(/worker round failed/)} failed rounds, ` +
    `${count(/restarting persistence actor/)} actor restarts, ${count(/worker recovered/)} recoveries ` +
    `(a failed round without a restart leaves that persistence actor stopped)`
}

/**
 * Persistence actors (log field `consumer=`) of a worker that had a failed
 * round and have not logged `worker recovered` since: each of them is no
 * longer working. Empty when every failed actor came back.
 * @param {import('./harness.mjs').ServerProc} w
 */
export function unrecoveredActors (w) {
  const state = new Map()
  for (const line of grepLog(w, /worker round (failed|panicked)|worker recovered/)) {
    const m = /consumer=(\S+)/.exec(line)
    if (!m) continue
    state.set(m[1], /worker recovered/.test(line) ? 'ok' : 'failed')
  }
  return [...state].filter(([, s]) => s === 'failed').map(([c]) => c)
}
