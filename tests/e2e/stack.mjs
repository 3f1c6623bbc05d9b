// Helpers for the "run it for real" tests (browser.test.mjs, lb.test.mjs,
// deploy-config.test.mjs): the demo page build, a static file server with
// the /auth/token proxy the load balancer provides in docker-compose.yml,
// `y-redis keygen` / `auth-example`, Prometheus text parsing, a scratch
// Postgres database, and headless Chromium.
//
// Environment:
//   CHROMIUM_PATH  browser binary (default /usr/bin/chromium, Debian's `chromium` package)
//   E2E_POSTGRES   admin URL of Postgres (default postgres://postgres@127.0.0.1:5432/test);
//                  when it does not answer, the tests fall back to filesystem storage

import fs from 'node:fs'
import http from 'node:http'
import path from 'node:path'
import { spawnSync } from 'node:child_process'
import pg from 'pg'
import { REPO_ROOT, assertBinary, freePort, randomHex, startServer, waitFor } from './harness.mjs'

export const DEMO_DIR = path.join(REPO_ROOT, 'demo')
export const DEMO_DIST = path.join(DEMO_DIR, 'dist')
export const ARTIFACTS_DIR = path.join(REPO_ROOT, 'tests', 'e2e', 'artifacts')
export const CHROMIUM_PATH = process.env.CHROMIUM_PATH || '/usr/bin/chromium'
export const PG_ADMIN_URL = process.env.E2E_POSTGRES || 'postgres://postgres@127.0.0.1:5432/test'

/** Flags for Debian's Chromium in a container without a display or network. */
export const CHROMIUM_ARGS = Object.freeze([
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync'
])

/** Throws a clear error when the browser is not installed. */
export function assertChromium () {
  let ok = false
  try { fs.accessSync(CHROMIUM_PATH, fs.constants.X_OK); ok = true } catch {}
  if (!ok) {
    throw new Error(`Chromium not found at ${CHROMIUM_PATH}. Install Debian's package: ` +
      '`apt-get update && apt-get install -y chromium` (or set CHROMIUM_PATH to a Chromium binary).')
  }
  return CHROMIUM_PATH
}

/** Launch headless Chromium through playwright-core. */
export async function launchChromium () {
  const exe = assertChromium()
  const { chromium } = await import('playwright-core')
  return chromium.launch({ executablePath: exe, headless: true, args: [...CHROMIUM_ARGS], timeout: 60000 })
}

function run (cmd, args, opts) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', ...opts })
  if (r.error) throw new Error(`${cmd} ${args.join(' ')}: ${r.error.message}`)
  if (r.status !== 0) {
    throw new Error(`${cmd} ${args.join(' ')} (in ${opts.cwd}) exited ${r.status}:\n${r.stdout}\n${r.stderr}`)
  }
  return r
}

/**
 * Build demo/dist (`npm run build`), installing demo/node_modules with
 * `npm ci` first when they are missing or older than the lock file.
 */
export function buildDemo () {
  const lock = path.join(DEMO_DIR, 'package-lock.json')
  const installed = path.join(DEMO_DIR, 'node_modules', '.package-lock.json')
  let fresh = false
  try { fresh = fs.statSync(installed).mtimeMs >= fs.statSync(lock).mtimeMs } catch {}
  if (!fresh) run('npm', ['ci', '--no-audit', '--no-fund'], { cwd: DEMO_DIR, timeout: 300000 })
  run('npm', ['run', 'build'], { cwd: DEMO_DIR, timeout: 120000 })
  for (const f of ['index.html', 'app.js', 'style.css']) {
    if (!fs.existsSync(path.join(DEMO_DIST, f))) throw new Error(`demo build did not write dist/${f}`)
  }
  return DEMO_DIST
}

/** `y-redis keygen` → { AUTH_PUBLIC_KEY, AUTH_PRIVATE_KEY } */
export function keygen () {
  const r = run(assertBinary(), ['keygen'], { cwd: REPO_ROOT, timeout: 30000 })
  const keys = {}
  for (const line of r.stdout.split('\n')) {
    // keygen prints .env lines: NAME='<json>'
    const m = /^(AUTH_PUBLIC_KEY|AUTH_PRIVATE_KEY)='(.+)'$/.exec(line.trim())
    if (m) keys[m[1]] = m[2]
  }
  if (!keys.AUTH_PUBLIC_KEY || !keys.AUTH_PRIVATE_KEY) throw new Error(`unexpected keygen output:\n${r.stdout}`)
  return keys
}

/**
 * Start `y-redis auth-example` on a free port and wait until it issues tokens.
 * @return {Promise<{ proc: import('./harness.mjs').ServerProc, port: number, url: string }>}
 */
export async function startAuthExample ({ prefix, privateKey, tag, workDir }) {
  const port = await freePort()
  const proc = await startServer({
    prefix,
    name: 'auth',
    tag,
    workDir,
    subcommand: 'auth-example',
    readyLog: /example auth backend listening/,
    env: { AUTH_EXAMPLE_PORT: String(port), AUTH_PRIVATE_KEY: privateKey }
  })
  const url = `http://127.0.0.1:${port}`
  await waitFor(async () => (await fetch(`${url}/auth/token?user=probe`)).ok,
    { timeout: 15000, message: `auth-example on ${url} to issue a token` })
  return { proc, port, url }
}

const MIME = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.png': 'image/png',
  '.svg': 'image/svg+xml'
}

/**
 * Serves `root` and forwards GET /auth/token to `authUrl`, as the load
 * balancer of docker-compose.yml does, so the demo page finds its token on
 * its own origin.
 * @return {Promise<{ server: http.Server, url: string, requests: string[], close: () => Promise<void> }>}
 */
export async function startStaticServer (root, authUrl) {
  const requests = []
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://localhost')
    requests.push(`${req.method} ${url.pathname}`)
    if (url.pathname === '/auth/token') {
      const upstream = http.request(`${authUrl}/auth/token${url.search}`, { method: 'GET' }, (up) => {
        res.writeHead(up.statusCode || 502, { 'content-type': up.headers['content-type'] || 'text/plain', 'cache-control': 'no-store' })
        up.pipe(res)
      })
      upstream.on('error', (e) => { res.writeHead(502); res.end(`auth backend: ${e.message}`) })
      upstream.end()
      return
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') { res.writeHead(405); res.end(); return }
    let rel = decodeURIComponent(url.pathname)
    if (rel.endsWith('/')) rel += 'index.html'
    const file = path.resolve(root, '.' + rel)
    if (!file.startsWith(path.resolve(root) + path.sep)) { res.writeHead(403); res.end(); return }
    fs.readFile(file, (err, data) => {
      if (err) { res.writeHead(404, { 'content-type': 'text/plain' }); res.end('not found'); return }
      res.writeHead(200, { 'content-type': MIME[path.extname(file)] || 'application/octet-stream', 'cache-control': 'no-store' })
      res.end(req.method === 'HEAD' ? undefined : data)
    })
  })
  const port = await freePort()
  await new Promise((resolve, reject) => { server.once('error', reject); server.listen(port, '127.0.0.1', resolve) })
  return {
    server,
    url: `http://127.0.0.1:${port}`,
    requests,
    close: () => new Promise((resolve) => { server.closeAllConnections?.(); server.close(() => resolve()) })
  }
}

/**
 * Parse Prometheus text exposition into name → summed value over all label sets.
 * @param {string} text
 * @return {Map<string, number>}
 */
export function parseMetrics (text) {
  const out = new Map()
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line)
    if (!m) continue
    const v = Number(m[3])
    if (Number.isNaN(v)) continue
    out.set(m[1], (out.get(m[1]) || 0) + v)
  }
  return out
}

/** GET http://127.0.0.1:<port>/metrics, parsed. */
export async function scrapeMetrics (port) {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`)
  if (res.status !== 200) throw new Error(`/metrics on port ${port} answered HTTP ${res.status}`)
  const text = await res.text()
  return { text, values: parseMetrics(text) }
}

/** The value of one metric; fails when the process does not export it. */
export function metric (scrape, name) {
  if (!scrape.values.has(name)) {
    throw new Error(`metric ${name} not exported; exported: ${[...scrape.values.keys()].join(', ')}`)
  }
  return scrape.values.get(name)
}

/**
 * A fresh Postgres database for one test file, or null when Postgres does
 * not answer (callers then use filesystem storage).
 * @return {Promise<{ url: string, name: string, drop: () => Promise<void> } | null>}
 */
export async function createScratchDatabase (tag) {
  const admin = new pg.Client({ connectionString: PG_ADMIN_URL, connectionTimeoutMillis: 3000 })
  try {
    await admin.connect()
  } catch {
    try { await admin.end() } catch {}
    return null
  }
  const name = `yredis_${tag.replace(/[^a-z0-9]/gi, '_').toLowerCase()}_${randomHex(4)}`
  await admin.query(`CREATE DATABASE "${name}"`)
  await admin.end()
  const url = new URL(PG_ADMIN_URL)
  url.pathname = '/' + name
  return {
    name,
    url: url.toString(),
    drop: async () => {
      const c = new pg.Client({ connectionString: PG_ADMIN_URL, connectionTimeoutMillis: 3000 })
      await c.connect()
      try { await c.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`) } finally { await c.end() }
    }
  }
}

/** Rows stored for a room in a y-redis Postgres database. */
export async function countStoredRows (dbUrl, room) {
  const c = new pg.Client({ connectionString: dbUrl, connectionTimeoutMillis: 3000 })
  await c.connect()
  try {
    const r = await c.query('SELECT count(*)::int AS n FROM yredis_docs_v1 WHERE room = $1', [room])
    return r.rows[0].n
  } finally { await c.end() }
}
