// Redis over TLS (README, "Redis deployments"): a `redis-server --tls-port`
// of this test only (no plain port), with a CA made by openssl here, client
// certificates required and the default user off (only an ACL user with a
// password). Two servers and a worker reach it through
// `rediss://user:password@…` + REDIS_TLS_CA_FILE + REDIS_TLS_CERT_FILE/KEY_FILE:
// clients on both servers converge, the worker persists and trims.
// The TLS Redis SIGKILLed and restarted empty while clients edit: every
// connection comes back over TLS and no edit is lost.
// A wrong CA, or no client certificate, stops a server and a worker at start
// with one line naming the variables, and no password in it.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import { spawn } from 'node:child_process'
import { Harness, waitFor, sleep, randomHex, fingerprint, binaryPath, decodeStreamMessage, FAST_WORKER_ENV } from './harness.mjs'
import { FsStorage, decodeStored } from './storage.mjs'
import { Editors, httpGet, streamMessages, waitConverged, sameContent, workerStory } from './faults.mjs'
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

  it('the TLS Redis SIGKILLed and restarted empty while 4 clients edit: all reconnect over TLS, no edit lost', { timeout: 90000 }, async (t) => h.wrap(async () => {
    const [s1, s2] = h.servers
    const room = `tls-fault-${randomHex(3)}`
    const clients = [h.client(s1, room, { name: 'c1' }), h.client(s1, room, { name: 'c2' }), h.client(s2, room, { name: 'c3' }), h.client(s2, room, { name: 'c4' })]
    await Promise.all(clients.map((c) => c.synced()))
    const editors = new Editors(clients, { interval: 60 }).start()
    await waitFor(async () => (await storage.pieces(room)).length > 0, { timeout: 20000, message: 'first persist of the room' })
    const [node] = tls.nodes
    const tKill = Date.now()
    await node.kill()
    await sleep(2000)
    // the port was just freed by our own SIGKILL: retry a failed bind
    for (let attempt = 0; ; attempt++) {
      try { await node.start(); break } catch (e) { if (attempt > 20) throw e; await sleep(200) }
    }
    const tRestart = Date.now()
    try { await h.redis.disconnect() } catch {}
    h.redis = await tls.client()
    assert.equal(await h.redis.dbSize(), 0, 'Redis came back empty')
    const upToRestart = editors.before(tRestart)
    await waitFor(() => clients.every((c) => editors.missing(c.snapshot(), upToRestart).length === 0), {
      timeout: 30000,
      interval: 20,
      message: () => clients.map((c) => `${c.name} missing ${editors.missing(c.snapshot(), upToRestart).length}/${upToRestart.length} closes=${JSON.stringify(c.closeEvents.slice(-4))}`).join('; ')
    })
    const tAgree = Date.now()
    await sleep(500)
    await editors.stop()
    const final = await waitConverged(clients, editors, { timeout: 20000 })
    for (const s of h.servers) {
      await waitFor(async () => (await httpGet(s.port)).status === 200, { timeout: 10000, interval: 100, message: `${s.name} /readyz 200 after the restart` })
    }
    let stored = null
    await waitFor(async () => {
      stored = decodeStored(await storage.pieces(room))
      return sameContent(stored, final)
    }, { timeout: 30000, interval: 200, message: () => `storage to hold every edit: want ${fingerprint(final)} got ${stored && fingerprint(stored)}; worker: ${workerStory(h.workers[0])}` })
    t.diagnostic(`TLS Redis down ${tRestart - tKill} ms; restart -> every client holds every edit made before it: ${tAgree - tRestart} ms; ${editors.edits.length} edits`)
    for (const c of clients) c.destroy()
    for (const p of h.procs) assert.ok(p.running, `${p.describe()} never exited`)
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
