// Redis over TLS (README, "Redis deployments"): a `redis-server --tls-port`
// of this test only (no plain port), with a CA made by openssl here, client
// certificates required and the default user off (only an ACL user with a
// password). Two servers and a worker reach it through
// `rediss://user:password@…` + REDIS_TLS_CA_FILE + REDIS_TLS_CERT_FILE/KEY_FILE:
// clients on both servers converge, the worker persists and trims.
// A wrong CA, or no client certificate, stops a server and a worker at start
// with one line naming the variables, and no password in it.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import { spawn } from 'node:child_process'
import { Harness, waitFor, randomHex, fingerprint, binaryPath, decodeStreamMessage, FAST_WORKER_ENV } from './harness.mjs'
import { FsStorage, decodeStored } from './storage.mjs'
import { Editors, streamMessages, waitConverged, sameContent } from './faults.mjs'
import { startTlsRedis } from './redis-topology.mjs'

/** Runs `y-redis <sub>` until it exits (or `timeout`); resolves with its exit code and output. */
function runToExit (sub, env, cwd, timeout = 20000) {
  return new Promise((resolve) => {
    const proc = spawn(binaryPath(), [sub], {
      env: { PATH: process.env.PATH, AUTH_DISABLED: 'true', LOG: 'info', STORAGE_DIR: path.join(cwd, 'data'), PORT: '0', WORKER_PORT: '0', ...env },
      cwd,
      stdio: ['ignore', 'pipe', 'pipe']
    })
    let stdout = ''
    let stderr = ''
    proc.stdout.on('data', (d) => { stdout += d })
    proc.stderr.on('data', (d) => { stderr += d })
    const t = setTimeout(() => proc.kill('SIGKILL'), timeout)
    proc.once('exit', (code, signal) => { clearTimeout(t); resolve({ code, signal, stdout, stderr }) })
  })
}

describe('Redis over TLS', { timeout: 120000 }, () => {
  let tls
  /** @type {Harness} */
  let h
  /** @type {FsStorage} */
  let storage

  before(async () => {
    tls = await startTlsRedis({ tag: 'redis-tls' })
    h = new Harness('redis-tls', { env: tls.env })
    storage = new FsStorage(path.join(h.workDir, 'data'))
    h.redis = await tls.client()
    await h.startServer('s1')
    await h.startServer('s2')
    await h.startWorker('w1')
  })
  after(async () => {
    await h?.teardown()
    await tls?.stop()
  })

  it('clients on two servers converge through a TLS Redis; the worker persists and trims', { timeout: 90000 }, async (t) => h.wrap(async () => {
    const [s1, s2] = h.servers
    const room = `tls-${randomHex(3)}`
    const clients = [h.client(s1, room, { name: 'c1' }), h.client(s1, room, { name: 'c2' }), h.client(s2, room, { name: 'c3' }), h.client(s2, room, { name: 'c4' })]
    await Promise.all(clients.map((c) => c.synced()))
    const editors = new Editors(clients, { interval: 40 }).start()
    await new Promise((resolve) => setTimeout(resolve, 3000))
    await editors.stop()
    const final = await waitConverged(clients, editors, { timeout: 20000 })
    t.diagnostic(`${editors.edits.length} edits by 4 clients on 2 servers converged`)
    for (const e of await streamMessages(h.redis, h.roomKey(room))) {
      assert.doesNotThrow(() => decodeStreamMessage(e.m), `stream entry ${e.id} decodes`)
    }
    let stored = null
    await waitFor(async () => {
      stored = decodeStored(await storage.pieces(room))
      return sameContent(stored, final)
    }, { timeout: 30000, interval: 200, message: () => `storage to hold every edit: want ${fingerprint(final)} got ${stored && fingerprint(stored)}` })
    // after the lifetime the stream is trimmed away and its task dropped
    await waitFor(async () => (await h.redis.exists(h.roomKey(room))) === 0, {
      timeout: 30000, interval: 200, message: `room stream ${h.roomKey(room)} to be compacted away`
    })
    // a late client on the other server gets everything from storage
    for (const c of clients) c.destroy()
    const late = h.client(s2, room, { name: 'late' })
    await late.synced()
    await waitFor(() => sameContent(late.snapshot(), final), { timeout: 10000, message: () => `late client: want ${fingerprint(final)} got ${fingerprint(late.snapshot())}` })
    for (const p of h.procs) assert.ok(p.running, `${p.describe()} still running`)
  })(t))

  for (const sub of ['server', 'worker']) {
    it(`${sub}: a CA that did not sign the server's certificate stops it at start with one clear line`, async (t) => h.wrap(async () => {
      const r = await runToExit(sub, { ...tls.env, ...FAST_WORKER_ENV, REDIS_PREFIX: h.prefix, REDIS_TLS_CA_FILE: tls.certs.otherCa }, h.workDir)
      t.diagnostic(`exit ${r.code}; stderr: ${r.stderr.trim()}`)
      assert.notEqual(r.code, 0, 'exits with an error')
      assert.equal(r.signal, null, 'exits by itself, quickly')
      const lines = r.stderr.trim().split('\n')
      assert.equal(lines.length, 1, `one line on stderr: ${r.stderr}`)
      assert.match(lines[0], /REDIS_TLS_CA_FILE/)
      assert.match(lines[0], /certificate/i)
      assert.ok(!(r.stderr + r.stdout).includes('e2e-acl-secret'), 'no password in the output')
    })(t))
  }

  it('server: no client certificate where Redis requires one stops it at start with one clear line', async (t) => h.wrap(async () => {
    const env = { ...tls.env, REDIS_PREFIX: h.prefix }
    delete env.REDIS_TLS_CERT_FILE
    delete env.REDIS_TLS_KEY_FILE
    const r = await runToExit('server', env, h.workDir)
    t.diagnostic(`exit ${r.code}; stderr: ${r.stderr.trim()}`)
    assert.notEqual(r.code, 0)
    assert.equal(r.signal, null, 'exits by itself, quickly')
    const lines = r.stderr.trim().split('\n')
    assert.equal(lines.length, 1, `one line on stderr: ${r.stderr}`)
    assert.match(lines[0], /REDIS_TLS_CERT_FILE/)
    assert.ok(!(r.stderr + r.stdout).includes('e2e-acl-secret'), 'no password in the output')
  })(t))
})
