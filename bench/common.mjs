// Shared helpers for the benchmark scripts: start release servers, read their
// memory, wait for conditions, delete a Redis prefix (tiny RESP client, so the
// bench needs no Redis package).
//
// Environment:
//   Y_REDIS_BIN   server binary (default ${CARGO_TARGET_DIR:-<repo>/target}/release/y-redis)
//   REDIS         redis URL (default redis://127.0.0.1:6379)
//   BENCH_LOG     server LOG level (default warn)
//   BENCH_KEEP=1  keep the scratch dir (server logs, storage) instead of deleting it

import fs from 'node:fs'
import os from 'node:os'
import net from 'node:net'
import path from 'node:path'
import crypto from 'node:crypto'
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'

export { sleep }

const here = path.dirname(fileURLToPath(import.meta.url))
export const REPO_ROOT = path.resolve(here, '..')
export const REDIS_URL = process.env.REDIS || 'redis://127.0.0.1:6379'

export function binaryPath () {
  if (process.env.Y_REDIS_BIN) return path.resolve(REPO_ROOT, process.env.Y_REDIS_BIN)
  const target = process.env.CARGO_TARGET_DIR
    ? path.resolve(REPO_ROOT, process.env.CARGO_TARGET_DIR)
    : path.join(REPO_ROOT, 'target')
  return path.join(target, 'release', 'y-redis')
}

export const randomHex = (n = 6) => crypto.randomBytes(n).toString('hex')

export async function freePort () {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.unref()
    srv.on('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

const tryConnect = (port) => new Promise((resolve) => {
  const sock = net.connect({ port, host: '127.0.0.1' })
  const done = (ok) => { sock.removeAllListeners(); sock.destroy(); resolve(ok) }
  sock.once('connect', () => done(true))
  sock.once('error', () => done(false))
  sock.setTimeout(1000, () => done(false))
})

export async function waitFor (pred, { timeout = 30000, interval = 25, message = 'condition' } = {}) {
  const start = Date.now()
  for (;;) {
    if (await pred()) return
    if (Date.now() - start > timeout) {
      throw new Error(`timed out after ${timeout} ms waiting for: ${typeof message === 'function' ? message() : message}`)
    }
    await sleep(interval)
  }
}

/** A scratch directory for server cwd, storage and logs; removed by `cleanup`. */
export function scratchDir (tag) {
  return fs.mkdtempSync(path.join(os.tmpdir(), `y-redis-bench-${tag}-`))
}

/**
 * Start `y-redis server` (release build) on a free port, wait until it accepts
 * TCP connections. Output goes to `<dir>/<name>.log`.
 */
export async function startServer ({ prefix, dir, name = 'server', env = {} }) {
  const bin = binaryPath()
  if (!fs.existsSync(bin)) {
    throw new Error(`server binary not found at ${bin}; build it: (cd ${REPO_ROOT} && cargo build --release)`)
  }
  const port = await freePort()
  const logPath = path.join(dir, `${name}.log`)
  const fd = fs.openSync(logPath, 'a')
  const childEnv = { ...process.env }
  for (const k of Object.keys(childEnv)) {
    if (/^(S3_|POSTGRES|AUTH_|YDOC_UPDATE_CALLBACK|REDIS_|STORAGE_DIR|HOST$|WS_|WORKER_|LOG)/.test(k)) delete childEnv[k]
  }
  Object.assign(childEnv, {
    PORT: String(port),
    HOST: '127.0.0.1',
    REDIS: REDIS_URL,
    REDIS_PREFIX: prefix,
    AUTH_DISABLED: 'true',
    // every benchmark client connects from 127.0.0.1
    MAX_UPGRADES_PER_IP_PER_SECOND: '1000000',
    MAX_CONNECTIONS_PER_IP: '1000000',
    STORAGE_DIR: path.join(dir, 'data'),
    LOG: process.env.BENCH_LOG || 'warn',
    ...env
  })
  const proc = spawn(bin, ['server'], { env: childEnv, cwd: dir, stdio: ['ignore', fd, fd] })
  fs.closeSync(fd)
  let exited = null
  proc.once('exit', (code, signal) => { exited = { code, signal } })
  const server = {
    proc,
    port,
    logPath,
    url: `ws://127.0.0.1:${port}`,
    get running () { return exited === null },
    async stop () {
      if (exited) return exited
      const done = new Promise((resolve) => proc.once('exit', () => resolve()))
      proc.kill('SIGTERM')
      const t = setTimeout(() => { try { proc.kill('SIGKILL') } catch {} }, 5000)
      await done
      clearTimeout(t)
      return exited
    }
  }
  process.on('exit', () => { if (!exited) { try { proc.kill('SIGKILL') } catch {} } })
  const deadline = Date.now() + 30000
  for (;;) {
    if (exited) throw new Error(`${bin} exited before listening (${JSON.stringify(exited)}):\n${fs.readFileSync(logPath, 'utf8')}`)
    if (await tryConnect(port)) return server
    if (Date.now() > deadline) { await server.stop(); throw new Error(`${bin} did not listen within 30 s`) }
    await sleep(50)
  }
}

/** Fields of /proc/<pid>/status in KiB: VmRSS, VmHWM, plus Threads (count). */
export function procStatus (pid) {
  const text = fs.readFileSync(`/proc/${pid}/status`, 'utf8')
  const get = (k) => {
    const m = text.match(new RegExp(`^${k}:\\s+(\\d+)`, 'm'))
    return m ? Number(m[1]) : NaN
  }
  // RssAnon: what the process allocated; RssFile: pages of its binary and
  // libraries (clean, shared with the page cache, grown by code first run)
  return { rssKiB: get('VmRSS'), hwmKiB: get('VmHWM'), threads: get('Threads'), anonKiB: get('RssAnon'), fileKiB: get('RssFile') }
}

export const mib = (kib) => (kib / 1024).toFixed(1) + ' MiB'

/** Percentile (nearest rank) of a sorted array. */
export function percentile (sorted, p) {
  if (sorted.length === 0) return NaN
  const rank = Math.ceil((p / 100) * sorted.length)
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]
}

// ---------------------------------------------------------------------------
// Minimal pipelining Redis client (RESP2 over TCP, text replies).

export class MiniRedis {
  constructor (sock) {
    this.sock = sock
    this.buf = Buffer.alloc(0)
    this.waiting = []
    sock.on('data', (d) => { this.buf = Buffer.concat([this.buf, d]); this.drain() })
    sock.on('error', (e) => { for (const w of this.waiting.splice(0)) w.reject(e) })
  }

  static async connect (url = REDIS_URL) {
    const u = new URL(url)
    const sock = net.connect({ host: u.hostname || '127.0.0.1', port: Number(u.port || 6379) })
    await new Promise((resolve, reject) => { sock.once('connect', resolve); sock.once('error', reject) })
    const r = new MiniRedis(sock)
    if (u.password) await r.cmd(u.username ? ['AUTH', decodeURIComponent(u.username), decodeURIComponent(u.password)] : ['AUTH', decodeURIComponent(u.password)])
    const db = u.pathname.replace('/', '')
    if (db) await r.cmd(['SELECT', db])
    return r
  }

  cmd (args) {
    const parts = [`*${args.length}\r\n`]
    for (const a of args) {
      const s = String(a)
      parts.push(`$${Buffer.byteLength(s)}\r\n${s}\r\n`)
    }
    return new Promise((resolve, reject) => {
      this.waiting.push({ resolve, reject })
      this.sock.write(parts.join(''))
    })
  }

  drain () {
    while (this.waiting.length > 0) {
      const r = parse(this.buf, 0)
      if (!r) return
      this.buf = this.buf.subarray(r.end)
      const w = this.waiting.shift()
      if (r.value instanceof Error) w.reject(r.value); else w.resolve(r.value)
    }
  }

  close () { this.sock.end() }
}

function parse (buf, pos) {
  const nl = buf.indexOf('\r\n', pos)
  if (nl < 0) return null
  const type = String.fromCharCode(buf[pos])
  const line = buf.toString('utf8', pos + 1, nl)
  const after = nl + 2
  switch (type) {
    case '+': return { value: line, end: after }
    case '-': return { value: new Error(line), end: after }
    case ':': return { value: Number(line), end: after }
    case '$': {
      const n = Number(line)
      if (n < 0) return { value: null, end: after }
      if (buf.length < after + n + 2) return null
      return { value: buf.toString('utf8', after, after + n), end: after + n + 2 }
    }
    case '*': {
      const n = Number(line)
      if (n < 0) return { value: null, end: after }
      const out = []
      let p = after
      for (let i = 0; i < n; i++) {
        const r = parse(buf, p)
        if (!r) return null
        out.push(r.value)
        p = r.end
      }
      return { value: out, end: p }
    }
    default: throw new Error(`unexpected RESP type ${JSON.stringify(type)}`)
  }
}

/** Delete every key starting with `prefix` (the servers' REDIS_PREFIX). Returns the count. */
export async function deletePrefix (prefix) {
  const r = await MiniRedis.connect()
  let cursor = '0'
  let n = 0
  try {
    do {
      const [next, keys] = await r.cmd(['SCAN', cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000])
      cursor = next
      if (keys.length > 0) n += await r.cmd(['DEL', ...keys])
    } while (cursor !== '0')
  } finally { r.close() }
  return n
}

/** Remove the scratch dir (keeps it when BENCH_KEEP=1, e.g. to read server logs). */
export function removeDir (dir) {
  if (process.env.BENCH_KEEP) { console.log(`(kept ${dir})`); return }
  fs.rmSync(dir, { recursive: true, force: true })
}
