// Helpers for auth.test.mjs: lib0 keys and tokens, a controllable permission
// callback server, raw upgrade attempts with their HTTP status, and small
// process helpers for the `keygen` / `auth-example` subcommands.
import fs from 'node:fs'
import http from 'node:http'
import path from 'node:path'
import { spawn, spawnSync } from 'node:child_process'
import * as ecdsa from 'lib0/crypto/ecdsa'
import * as jwt from 'lib0/crypto/jwt'
import * as decoding from 'lib0/decoding'
import {
  Y, WebSocket, sleep, binaryPath, assertBinary, freePort, LOG_DIR, REDIS_URL, ServerProc, tailFile
} from './harness.mjs'

// ---------------------------------------------------------------------------
// Keys and tokens (lib0's own code, as @y/redis uses it)

/** A fresh lib0 ECDSA P-384 key pair, plus the public key as lib0 exports it (AUTH_PUBLIC_KEY). */
export async function lib0KeyPair () {
  const { privateKey, publicKey } = await ecdsa.generateKeyPair({ extractable: true })
  const publicJwk = JSON.stringify(await ecdsa.exportKeyJwk(publicKey))
  const privateJwk = JSON.stringify(await ecdsa.exportKeyJwk(privateKey))
  return { privateKey, publicKey, publicJwk, privateJwk }
}

/** lib0's getUnixTime() is milliseconds. */
export const nowMs = () => Date.now()

/**
 * A token signed with lib0's encodeJwt.
 * @param {CryptoKey} privateKey
 * @param {Record<string, any>} payload
 */
export const signToken = (privateKey, payload) => jwt.encodeJwt(privateKey, { iss: 'e2e-auth', ...payload })

/** Replace the payload of a token, keeping its header and signature. */
export function tamperPayload (token, changes) {
  const [header, payload, signature] = token.split('.')
  const claims = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'))
  const forged = Buffer.from(JSON.stringify({ ...claims, ...changes })).toString('base64url')
  return [header, forged, signature].join('.')
}

export { jwt, ecdsa }

// ---------------------------------------------------------------------------
// Permission callback server

/**
 * `GET <base>/<room>/<user>` answers per (room, user) what the test sets:
 *   'rw' | 'r'  -> 200 {yroom, yaccess, yuserid}
 *   'none'      -> 200 {yroom, yaccess: 'none', yuserid}
 *   '404'       -> HTTP 404
 *   '500'       -> HTTP 500
 *   'hang'      -> never answers (socket kept open until close())
 * Unknown (room, user) pairs get 'none'. Every request is recorded.
 */
export class PermServer {
  constructor (basePath = '/auth/perm') {
    this.basePath = basePath
    /** @type {Map<string, string>} */
    this.modes = new Map()
    /** @type {Array<{ room: string, user: string, rawPath: string, mode: string, at: number, answered: boolean }>} */
    this.requests = []
    /** @type {Set<http.ServerResponse>} */
    this.hanging = new Set()
    this.server = http.createServer((req, res) => this.handle(req, res))
    this.server.keepAliveTimeout = 1000
  }

  async start () {
    await new Promise((resolve, reject) => {
      this.server.once('error', reject)
      this.server.listen(0, '127.0.0.1', resolve)
    })
    this.port = this.server.address().port
    this.url = `http://127.0.0.1:${this.port}${this.basePath}`
    return this
  }

  set (room, user, mode) { this.modes.set(`${room}\u0000${user}`, mode); return this }
  mode (room, user) { return this.modes.get(`${room}\u0000${user}`) ?? 'none' }

  /** requests for (room, user) seen so far */
  requestsFor (room, user) { return this.requests.filter((r) => r.room === room && r.user === user) }

  handle (req, res) {
    const rawPath = (req.url || '').split('?')[0]
    if (req.method !== 'GET' || !rawPath.startsWith(this.basePath + '/')) {
      res.writeHead(404).end('not found')
      return
    }
    const parts = rawPath.slice(this.basePath.length + 1).split('/')
    if (parts.length !== 2) {
      res.writeHead(400).end(`expected ${this.basePath}/<room>/<user>, got ${rawPath}`)
      return
    }
    const [room, user] = parts.map((p) => decodeURIComponent(p))
    const mode = this.mode(room, user)
    const rec = { room, user, rawPath, mode, at: Date.now(), answered: false }
    this.requests.push(rec)
    res.on('finish', () => { rec.answered = true })
    // 'slow:<ms>:<mode>' answers <mode> after <ms>
    const slow = /^slow:(\d+):(.+)$/.exec(mode)
    if (slow) {
      setTimeout(() => {
        res.writeHead(200, { 'content-type': 'application/json' })
        res.end(JSON.stringify({ yroom: room, yaccess: slow[2], yuserid: user }))
      }, Number(slow[1])).unref()
      return
    }
    switch (mode) {
      case 'rw':
      case 'r':
      case 'none':
        res.writeHead(200, { 'content-type': 'application/json' })
        res.end(JSON.stringify({ yroom: room, yaccess: mode, yuserid: user }))
        break
      case '404':
        res.writeHead(404, { 'content-type': 'application/json' }).end('{"error":"no such room"}')
        break
      case '500':
        res.writeHead(500).end('internal error')
        break
      case 'hang':
        this.hanging.add(res)
        res.on('close', () => this.hanging.delete(res))
        break
      default:
        res.writeHead(500).end(`test bug: unknown mode ${mode}`)
    }
  }

  async close () {
    for (const res of this.hanging) { try { res.destroy() } catch {} }
    this.hanging.clear()
    this.server.closeAllConnections?.()
    await new Promise((resolve) => this.server.close(() => resolve()))
  }
}

// ---------------------------------------------------------------------------
// Raw upgrade attempts

/**
 * Try a websocket upgrade with the `ws` client. Resolves with
 *   { status: 101, ws, protocol, ms } when it opened (the caller closes ws), or
 *   { status: <http status>, body, ms } when the server refused the upgrade, or
 *   { status: 0, error, ms } on a network error / close without response.
 * @param {string} url
 * @param {{ protocols?: string[], timeout?: number }} [opts]
 */
export function tryUpgrade (url, { protocols = [], timeout = 10000 } = {}) {
  const start = Date.now()
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, protocols)
    ws.binaryType = 'nodebuffer'
    /** @type {Buffer[]} */
    const frames = []
    ws.on('message', (data, isBinary) => { if (isBinary) frames.push(Buffer.from(data)) })
    let settled = false
    const finish = (v) => {
      if (settled) return
      settled = true
      clearTimeout(t)
      resolve({ ...v, ms: Date.now() - start })
    }
    const t = setTimeout(() => {
      if (settled) return
      settled = true
      try { ws.terminate() } catch {}
      reject(new Error(`upgrade of ${url} got no answer within ${timeout} ms`))
    }, timeout)
    ws.on('open', () => finish({ status: 101, ws, protocol: ws.protocol, frames }))
    ws.on('unexpected-response', (_req, res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (c) => { body += c })
      const done = () => { finish({ status: res.statusCode, body }); try { ws.terminate() } catch {} }
      res.on('end', done)
      res.on('error', done)
      res.on('aborted', done)
      // do not wait forever for a body
      setTimeout(done, 2000).unref()
    })
    ws.on('error', (e) => finish({ status: 0, error: e }))
    ws.on('close', () => finish({ status: 0, error: new Error('closed before open') }))
  })
}

/** Close an opened raw socket and wait (bounded) for it to be gone. */
export async function closeRaw (ws) {
  if (!ws) return
  await Promise.race([new Promise((resolve) => { ws.once('close', resolve); try { ws.close() } catch { resolve() } }), sleep(2000)])
  try { ws.terminate() } catch {}
}

/** POST JSON with optional headers; resolves { status, body }. */
export async function postJSON (url, body, headers = {}) {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(5000)
  })
  return { status: res.status, body: await res.text() }
}

export const httpUrl = (server) => `http://127.0.0.1:${server.port}`

// ---------------------------------------------------------------------------
// Watching what a y-websocket client receives

/**
 * Yjs structs of a v1 update, as { client, clock, str } (str: inserted text if any).
 * @param {Uint8Array} update
 */
export function updateStructs (update) {
  const { structs } = Y.decodeUpdate(update)
  return structs.map((s) => ({ client: s.id.client, clock: s.id.clock, str: typeof s.content?.str === 'string' ? s.content.str : null }))
}

/**
 * Decode a y-websocket frame; returns the Yjs update of a sync step 2 / update, else null.
 * @param {Uint8Array} frame
 */
export function syncPayload (frame) {
  try {
    const dec = decoding.createDecoder(frame)
    if (decoding.readVarUint(dec) !== 0) return null
    const sub = decoding.readVarUint(dec)
    if (sub !== 1 && sub !== 2) return null
    return decoding.readVarUint8Array(dec)
  } catch { return null }
}

/**
 * Record every Yjs struct the client's current socket receives (from now on).
 * @param {import('./harness.mjs').Client} client
 */
export function watchReceivedStructs (client) {
  /** @type {Array<{client: number, clock: number, str: string|null}>} */
  const seen = []
  const ws = client.provider.ws
  if (!ws) throw new Error(`${client.name} has no socket to watch`)
  ws.on('message', (data) => {
    const u = syncPayload(new Uint8Array(data))
    if (u) { try { seen.push(...updateStructs(u)) } catch {} }
  })
  return seen
}

// ---------------------------------------------------------------------------
// Processes

/** The environment of a child process without the developer's y-redis settings. */
export function cleanEnv (extra = {}) {
  const env = { ...process.env }
  for (const k of Object.keys(env)) {
    if (/^(S3_|POSTGRES|AUTH_|ADMIN_SECRET|YDOC_UPDATE_CALLBACK|REDIS|STORAGE_DIR|HOST$|PORT$|WS_|WORKER_|LOG)/.test(k)) delete env[k]
  }
  return { ...env, ...extra }
}

/** Run the binary to completion in `cwd` (no .env there); resolves { status, stdout, stderr }. */
export function runBin (args, { env = {}, cwd, timeout = 15000 } = {}) {
  const bin = assertBinary()
  fs.mkdirSync(cwd, { recursive: true })
  const r = spawnSync(bin, args, { env: cleanEnv(env), cwd, timeout, encoding: 'utf8' })
  if (r.error) throw new Error(`${bin} ${args.join(' ')}: ${r.error.message}`)
  return { status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr }
}

/**
 * Start a long-running subcommand that listens on `port` (which the caller put
 * into `env` under the subcommand's own variable) and wait for the port.
 * @return {Promise<ServerProc>}
 */
export async function startListening ({ subcommand, env, port, name, tag, cwd }) {
  const bin = assertBinary()
  fs.mkdirSync(cwd, { recursive: true })
  const logPath = path.join(LOG_DIR, `${tag}-${name}-${port}.log`)
  const fd = fs.openSync(logPath, 'a')
  fs.writeSync(fd, `# ${bin} ${subcommand} port ${port}\n`)
  const proc = spawn(bin, [subcommand], { env: cleanEnv({ LOG: 'info', REDIS: REDIS_URL, ...env }), cwd, stdio: ['ignore', fd, fd] })
  fs.closeSync(fd)
  const sp = new ServerProc({ proc, port, logPath, name })
  process.once('exit', () => { try { proc.kill('SIGKILL') } catch {} })
  const deadline = Date.now() + 20000
  for (;;) {
    if (!sp.running) throw new Error(`${subcommand} exited early (${JSON.stringify(sp.exitStatus)}); log ${logPath}:\n${tailFile(logPath)}`)
    try {
      const res = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(1000) })
      await res.arrayBuffer()
      return sp
    } catch {}
    if (Date.now() > deadline) {
      await sp.stop(1000)
      throw new Error(`${subcommand} did not listen on ${port} within 20 s; log ${logPath}:\n${tailFile(logPath)}`)
    }
    await sleep(100)
  }
}

export { binaryPath, freePort }
