// Storage backends for the worker/storage e2e tests (ARCHITECTURE.md, "Storage layout"), inspected
// from outside the server: Postgres through `pg`, S3 through a moto server
// spoken to with plain HTTP, the filesystem through node:fs.
//
// Environment:
//   E2E_POSTGRES   admin URL of the Postgres server (default postgres://postgres@127.0.0.1:5432/test);
//                  every test file creates its own database `e2e_<hex>` there and drops it at the end
//   E2E_PYTHON     python with moto installed (default python3); one `moto.server` per test file
//
// Every backend offers:
//   env                        settings for servers and workers (POSTGRES / S3_* / STORAGE_DIR)
//   pieces(room, docid)        [{ ref, bytes, sv? }]: every stored piece of a document, as stored
//   put(room, docid, bytes)    store a piece the way @y/redis 0.1.x does
//   close(failed)              drop the database / stop moto

import fs from 'node:fs'
import path from 'node:path'
import crypto from 'node:crypto'
import { spawn } from 'node:child_process'
import pg from 'pg'
import { Y, LOG_DIR, freePort, randomHex, sleep, tailFile, withTimeout } from './harness.mjs'

export const PG_ADMIN_URL = process.env.E2E_POSTGRES || 'postgres://postgres@127.0.0.1:5432/test'
export const enc = encodeURIComponent

// ---------------------------------------------------------------------------
// decoding what is stored

/**
 * Merge stored pieces the way @y/redis reads them (Y.mergeUpdatesV2 +
 * Y.applyUpdateV2) and describe the document.
 * @param {Array<{ bytes: Uint8Array }>} pieces
 */
export function decodeStored (pieces) {
  const doc = new Y.Doc()
  const updates = pieces.map((p) => new Uint8Array(p.bytes))
  if (updates.length > 0) Y.applyUpdateV2(doc, updates.length === 1 ? updates[0] : Y.mergeUpdatesV2(updates))
  const out = {
    text: doc.getText('text').toString(),
    map: doc.getMap('map').toJSON(),
    sv: Buffer.from(Y.encodeStateVector(doc))
  }
  doc.destroy()
  return out
}

/**
 * A state vector (v1 encoding) as a canonical string "client:clock,..." sorted by
 * client: yjs writes entries sorted by client id descending, yrs in hash order,
 * both decode to the same vector.
 */
export function svString (sv) {
  return [...Y.decodeStateVector(new Uint8Array(sv)).entries()].sort((a, b) => a[0] - b[0]).map(([c, k]) => `${c}:${k}`).join(',')
}

/** text + map of a Y.Doc, as Client.snapshot() shows them */
export function docContent (doc) {
  return { text: doc.getText('text').toString(), map: doc.getMap('map').toJSON() }
}

// ---------------------------------------------------------------------------
// Postgres

export class PostgresDb {
  /** Create a fresh database `e2e_<hex>` on the server of PG_ADMIN_URL. */
  static async create () {
    const admin = new pg.Client({ connectionString: PG_ADMIN_URL })
    try {
      await withTimeout(admin.connect(), 5000, `connect to Postgres at ${PG_ADMIN_URL}`)
    } catch (e) {
      throw new Error(`cannot reach Postgres at ${PG_ADMIN_URL} (set E2E_POSTGRES=postgres://...): ${e.message}`)
    }
    const name = `e2e_${randomHex(6)}`
    await admin.query(`CREATE DATABASE ${name}`)
    const url = new URL(PG_ADMIN_URL)
    url.pathname = `/${name}`
    const db = new PostgresDb(admin, name, url.toString())
    db.client = new pg.Client({ connectionString: db.url })
    await db.client.connect()
    return db
  }

  constructor (admin, name, url) {
    this.kind = 'postgres'
    this.admin = admin
    this.name = name
    this.url = url
    /** @type {pg.Client} */
    this.client = null
  }

  get env () { return { POSTGRES: this.url } }
  describe () { return `postgres database ${this.name}` }

  /** The table exactly as @y/redis 0.1.x creates it. */
  async createTableLikeYRedis () {
    await this.client.query('CREATE TABLE IF NOT EXISTS yredis_docs_v1 (room text, doc text, r SERIAL, update bytea, sv bytea, PRIMARY KEY (room,doc,r))')
  }

  async tableExists () {
    const r = await this.client.query("SELECT to_regclass('public.yredis_docs_v1') AS t")
    return r.rows[0].t !== null
  }

  async pieces (room, docid = 'index') {
    if (!(await this.tableExists())) return []
    const r = await this.client.query('SELECT r, update, sv FROM yredis_docs_v1 WHERE room = $1 AND doc = $2 ORDER BY r', [room, docid])
    return r.rows.map((row) => ({ ref: String(row.r), bytes: row.update, sv: row.sv }))
  }

  /** every (room, doc) with its number of rows */
  async summary () {
    if (!(await this.tableExists())) return []
    const r = await this.client.query('SELECT room, doc, count(*)::int AS n FROM yredis_docs_v1 GROUP BY room, doc ORDER BY room, doc')
    return r.rows
  }

  /** Insert a row the way @y/redis's postgres storage does. */
  async put (room, docid, bytes, sv) {
    if (!sv) {
      const d = new Y.Doc()
      Y.applyUpdateV2(d, bytes)
      sv = Y.encodeStateVector(d)
      d.destroy()
    }
    await this.client.query('INSERT INTO yredis_docs_v1 (room, doc, update, sv) VALUES ($1, $2, $3, $4)',
      [room, docid, Buffer.from(bytes), Buffer.from(sv)])
  }

  async close () {
    try { await this.client?.end() } catch {}
    try {
      if (!process.env.E2E_KEEP_KEYS) await this.admin.query(`DROP DATABASE IF EXISTS ${this.name} WITH (FORCE)`)
    } finally {
      await this.admin.end()
    }
  }
}

// ---------------------------------------------------------------------------
// S3 (moto)

/** moto does not check signatures, but answers anonymous object reads with 403 */
const FAKE_AUTH = 'AWS4-HMAC-SHA256 Credential=test/20240101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0'

const xmlText = (s) => s.replace(/&(lt|gt|quot|apos|amp|#x[0-9a-fA-F]+|#[0-9]+);/g, (_m, e) =>
  e === 'lt' ? '<' : e === 'gt' ? '>' : e === 'quot' ? '"' : e === 'apos' ? "'" : e === 'amp' ? '&'
    : String.fromCodePoint(e[1] === 'x' ? parseInt(e.slice(2), 16) : parseInt(e.slice(1), 10)))

export class MotoS3 {
  /**
   * Start `python3 -m moto.server` on a free port.
   * @param {string} logName name of its log file in .logs/
   */
  static async start (logName = `moto-${randomHex(4)}`) {
    const port = await freePort()
    fs.mkdirSync(LOG_DIR, { recursive: true })
    const logPath = path.join(LOG_DIR, `${logName}-${port}.log`)
    const fd = fs.openSync(logPath, 'a')
    const python = process.env.E2E_PYTHON || 'python3'
    const proc = spawn(python, ['-m', 'moto.server', '-H', '127.0.0.1', '-p', String(port)], { stdio: ['ignore', fd, fd] })
    fs.closeSync(fd)
    const s3 = new MotoS3(proc, port, logPath)
    let spawnError = null
    proc.once('error', (e) => { spawnError = e })
    const deadline = Date.now() + 30000
    for (;;) {
      if (spawnError) throw new Error(`cannot start moto (${python} -m moto.server): ${spawnError.message}`)
      if (s3.exitStatus) {
        throw new Error(`moto server exited at start (${JSON.stringify(s3.exitStatus)}); is moto installed (pip install 'moto[server]')?\n${tailFile(logPath)}`)
      }
      try {
        const res = await fetch(`${s3.base}/`, { signal: AbortSignal.timeout(1000) })
        await res.arrayBuffer()
        return s3
      } catch {}
      if (Date.now() > deadline) {
        await s3.stop()
        throw new Error(`moto server did not answer on port ${port} within 30 s\n${tailFile(logPath)}`)
      }
      await sleep(100)
    }
  }

  constructor (proc, port, logPath) {
    this.kind = 's3'
    this.proc = proc
    this.port = port
    this.logPath = logPath
    this.base = `http://127.0.0.1:${port}`
    this.bucket = `e2e-${randomHex(6)}`
    this.exitStatus = null
    this.exited = new Promise((resolve) => proc.once('exit', (code, signal) => { this.exitStatus = { code, signal }; resolve() }))
    liveMotos.add(this)
  }

  get env () {
    return {
      S3_ENDPOINT: '127.0.0.1',
      S3_PORT: String(this.port),
      S3_SSL: 'false',
      S3_ACCESS_KEY: 'test',
      S3_SECRET_KEY: 'testsecret',
      S3_BUCKET: this.bucket
    }
  }

  describe () { return `moto S3 at ${this.base}, bucket ${this.bucket} (log ${this.logPath})` }

  /** URL path of an object: the key's segments percent-encoded once more ('%' -> '%25'). */
  objectPath (key) { return `/${this.bucket}/${key.split('/').map(encodeURIComponent).join('/')}` }

  async request (method, pathAndQuery, body) {
    const headers = { authorization: FAKE_AUTH }
    if (body) headers['content-type'] = 'application/octet-stream'
    const res = await fetch(this.base + pathAndQuery, { method, headers, body, signal: AbortSignal.timeout(10000) })
    const bytes = Buffer.from(await res.arrayBuffer())
    return { status: res.status, bytes, text: () => bytes.toString('utf8') }
  }

  async createBucket () {
    const r = await this.request('PUT', `/${this.bucket}`)
    if (r.status !== 200) throw new Error(`PUT bucket ${this.bucket}: HTTP ${r.status} ${r.text()}`)
  }

  async bucketExists () {
    const r = await this.request('HEAD', `/${this.bucket}`)
    return r.status === 200
  }

  /** every key under `prefix` */
  async listKeys (prefix = '') {
    const keys = []
    let token = null
    for (;;) {
      let q = `/${this.bucket}?list-type=2&prefix=${encodeURIComponent(prefix)}`
      if (token) q += `&continuation-token=${encodeURIComponent(token)}`
      const r = await this.request('GET', q)
      if (r.status === 404) return []
      if (r.status !== 200) throw new Error(`list ${prefix}: HTTP ${r.status} ${r.text()}`)
      const xml = r.text()
      for (const m of xml.matchAll(/<Key>([^<]*)<\/Key>/g)) keys.push(xmlText(m[1]))
      const next = /<NextContinuationToken>([^<]*)<\/NextContinuationToken>/.exec(xml)
      if (!/<IsTruncated>true<\/IsTruncated>/.test(xml) || !next) return keys
      token = xmlText(next[1])
    }
  }

  async get (key) {
    const r = await this.request('GET', this.objectPath(key))
    if (r.status !== 200) throw new Error(`GET ${key}: HTTP ${r.status} ${r.text().slice(0, 300)}`)
    return r.bytes
  }

  docPrefix (room, docid = 'index') { return `${enc(room)}/${enc(docid)}/` }

  async pieces (room, docid = 'index') {
    for (let attempt = 0; ; attempt++) {
      const keys = await this.listKeys(this.docPrefix(room, docid))
      try {
        const out = []
        for (const key of keys) out.push({ ref: key, bytes: await this.get(key) })
        return out
      } catch (e) {
        // a compaction replaced a piece between list and get
        if (attempt >= 3) throw e
      }
    }
  }

  /** every document prefix (enc(room)/enc(docid)) with its number of objects */
  async summary () {
    const counts = new Map()
    for (const key of await this.listKeys('')) {
      const doc = key.split('/').slice(0, -1).join('/')
      counts.set(doc, (counts.get(doc) || 0) + 1)
    }
    return [...counts].map(([doc, n]) => ({ doc, n }))
  }

  /** Store an object at enc(room)/enc(docid)/<uuid v4>, as @y/redis's S3 storage does. */
  async put (room, docid, bytes) {
    const key = `${this.docPrefix(room, docid)}${crypto.randomUUID()}`
    const r = await this.request('PUT', this.objectPath(key), Buffer.from(bytes))
    if (r.status !== 200) throw new Error(`PUT ${key}: HTTP ${r.status} ${r.text()}`)
    return key
  }

  async stop () {
    if (this.exitStatus) return
    try { this.proc.kill('SIGTERM') } catch {}
    const t = setTimeout(() => { try { this.proc.kill('SIGKILL') } catch {} }, 3000)
    await this.exited
    clearTimeout(t)
    liveMotos.delete(this)
  }

  async close (failed) {
    await this.stop()
    if (!failed && !process.env.E2E_KEEP_LOGS) { try { fs.unlinkSync(this.logPath) } catch {} }
  }
}

const liveMotos = new Set()
process.on('exit', () => { for (const m of liveMotos) { try { m.proc.kill('SIGKILL') } catch {} } })

// ---------------------------------------------------------------------------
// Filesystem

export class FsStorage {
  constructor (dir) {
    this.kind = 'fs'
    this.dir = dir
  }

  get env () { return { STORAGE_DIR: this.dir } }
  describe () { return `filesystem storage at ${this.dir}` }
  docDir (room, docid = 'index') { return path.join(this.dir, enc(room), enc(docid)) }

  async pieces (room, docid = 'index') {
    const dir = this.docDir(room, docid)
    for (let attempt = 0; ; attempt++) {
      let names = []
      try { names = fs.readdirSync(dir) } catch (e) { if (e.code === 'ENOENT') return []; throw e }
      try {
        // temp files of an unfinished write start with '.'
        return names.filter((n) => !n.startsWith('.')).sort().map((n) => ({ ref: n, bytes: fs.readFileSync(path.join(dir, n)) }))
      } catch (e) {
        if (e.code !== 'ENOENT' || attempt >= 3) throw e
      }
    }
  }

  async summary () {
    const out = []
    let rooms = []
    try { rooms = fs.readdirSync(this.dir) } catch { return out }
    for (const r of rooms) {
      for (const d of fs.readdirSync(path.join(this.dir, r))) {
        const n = fs.readdirSync(path.join(this.dir, r, d)).filter((x) => !x.startsWith('.')).length
        out.push({ doc: `${r}/${d}`, n })
      }
    }
    return out
  }

  async put (room, docid, bytes) {
    const dir = this.docDir(room, docid)
    fs.mkdirSync(dir, { recursive: true })
    const name = crypto.randomUUID()
    fs.writeFileSync(path.join(dir, name), bytes)
    return name
  }

  async close () {}
}

// ---------------------------------------------------------------------------

export const BACKENDS = ['postgres', 's3', 'fs']

/**
 * Create a backend for `kind` and wire it into harness `h`: its env goes to
 * every server and worker, it is closed at `h.teardown()`. Call before `h.setup`.
 * @param {'postgres' | 's3' | 'fs'} kind
 * @param {import('./harness.mjs').Harness} h
 */
export async function useBackend (kind, h) {
  let backend
  if (kind === 'postgres') {
    backend = await PostgresDb.create()
  } else if (kind === 's3') {
    backend = await MotoS3.start(`${h.tag}-${h.prefix}-moto`)
  } else if (kind === 'fs') {
    backend = new FsStorage(path.join(h.workDir, 'data'))
  } else {
    throw new Error(`unknown storage backend ${kind}`)
  }
  h.cleanups.push((failed) => backend.close(failed))
  Object.assign(h.env, backend.env)
  return backend
}
