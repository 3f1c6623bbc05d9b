// Graceful shutdown and the operator's port:
// - SIGTERM: connected clients get close code 1012 (service restart, so
//   y-websocket reconnects elsewhere) and the process exits 0 within 10 s.
// - SHUTDOWN_DRAIN_MS: /readyz answers 503 at once, the server keeps serving
//   (new clients too) for the drain, then closes with 1012.
// - INTERNAL_PORT: /metrics, /readyz, /healthz and /admin/recheck move to
//   their own port; the public one serves websockets only.
// - the worker finishes compactions in flight, releases its room locks and
//   exits 0.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { Harness, waitFor, withTimeout, randomHex, tailFile, freePort, sleep, pseudoText, scanKeys } from './harness.mjs'
const h = new Harness('sigterm')

describe('graceful shutdown', { timeout: 90000 }, () => {
  before(async () => { await h.setup(1) })
  after(async () => { await h.teardown() })

  it('SIGTERM closes client sockets with 1012 and exits 0 within 10 s', { timeout: 60000 }, h.wrap(async () => {
    const [s1] = h.servers
    const room1 = `term-${randomHex(4)}`
    const room2 = `term-${randomHex(4)}`
    const clients = [h.client(s1, room1, { name: 'c1' }), h.client(s1, room1, { name: 'c2' }), h.client(s1, room2, { name: 'c3' })]
    await Promise.all(clients.map((c) => c.synced()))
    clients[0].text.insert(0, 'x')
    await waitFor(() => clients[1].text.toString() === 'x', { message: 'edit to reach c2 before shutdown' })
    const raw = h.raw(s1, room2)
    await raw.open()

    const t0 = Date.now()
    s1.proc.kill('SIGTERM')
    await waitFor(() => clients.every((c) => c.closeEvents.length > 0) && raw.closeEvent, {
      timeout: 10000,
      message: () => `all clients to be closed by the server; close events: ${clients.map((c) => `${c.name}=${JSON.stringify(c.closeEvents)}`).join(' ')} raw=${JSON.stringify(raw.closeEvent)}`
    })
    for (const c of clients) {
      assert.equal(c.closeEvents[0]?.code, 1012, `${c.name}'s first close event must have code 1012 (got ${JSON.stringify(c.closeEvents[0])})`)
    }
    assert.equal(raw.closeEvent.code, 1012, `raw socket close code must be 1012 (got ${JSON.stringify(raw.closeEvent)})`)

    const status = await withTimeout(s1.exited, Math.max(1, 10000 - (Date.now() - t0)),
      `server process to exit within 10 s of SIGTERM\n${tailFile(s1.logPath)}`)
    assert.deepEqual(status, { code: 0, signal: null }, `server must exit with status 0 after SIGTERM, got ${JSON.stringify(status)}`)
    for (const c of clients) c.destroy()
  }))

  it('SHUTDOWN_DRAIN_MS: /readyz fails at once, clients are served through the drain, then closed with 1012', { timeout: 60000 }, h.wrap(async (t) => {
    const s = await h.startServer('s-drain', { SHUTDOWN_DRAIN_MS: '1500' })
    const room = `drain-${randomHex(4)}`
    const a = h.client(s, room, { name: 'a' })
    await a.synced()
    const ready = async () => (await fetch(`http://127.0.0.1:${s.port}/readyz`)).status
    assert.equal(await ready(), 200)
    const t0 = Date.now()
    s.proc.kill('SIGTERM')
    await waitFor(async () => (await ready()) === 503, { timeout: 1000, interval: 10, message: '/readyz to fail right after SIGTERM' })
    const readyFailedMs = Date.now() - t0
    // still serving: a new client joins and edits reach it
    const b = h.client(s, room, { name: 'b' })
    await b.synced()
    a.text.insert(0, 'during the drain')
    await waitFor(() => b.text.toString() === 'during the drain', { message: 'edits flow during the drain' })
    assert.equal(a.closeEvents.length, 0, 'nobody is closed during the drain')
    await waitFor(() => a.closeEvents.length > 0 && b.closeEvents.length > 0, { timeout: 5000, message: 'clients closed after the drain' })
    const closedMs = Date.now() - t0
    assert.equal(a.closeEvents[0].code, 1012)
    assert.equal(b.closeEvents[0].code, 1012)
    assert.ok(closedMs >= 1400, `closed after the drain (${closedMs} ms)`)
    assert.deepEqual(await withTimeout(s.exited, 10000, 'exit'), { code: 0, signal: null })
    t.diagnostic(`drain: /readyz 503 after ${readyFailedMs} ms, sessions closed with 1012 after ${closedMs} ms`)
    a.destroy()
    b.destroy()
  }))

  it('INTERNAL_PORT: probes, metrics and the admin endpoint leave the public port', { timeout: 30000 }, h.wrap(async () => {
    const internal = await freePort()
    const s = await h.startServer('s-internal', { INTERNAL_PORT: String(internal), ADMIN_SECRET: 'admin-secret-for-test' })
    const get = async (port, path) => (await fetch(`http://127.0.0.1:${port}${path}`)).status
    for (const path of ['/metrics', '/readyz', '/healthz']) {
      assert.equal(await get(internal, path), 200, `${path} on the internal port`)
      assert.notEqual(await get(s.port, path), 200, `${path} not on the public port`)
    }
    const recheck = (port) => fetch(`http://127.0.0.1:${port}/admin/recheck`, {
      method: 'POST', headers: { authorization: 'Bearer admin-secret-for-test' }, body: JSON.stringify({ room: 'r' })
    }).then((r) => r.status)
    assert.equal(await recheck(internal), 202)
    assert.notEqual(await recheck(s.port), 202)
    // websockets still on the public port
    const c = h.client(s, `internal-${randomHex(3)}`, { name: 'c' })
    await c.synced()
    c.destroy()
    await s.stop()
  }))

  it('the worker finishes compactions in flight on SIGTERM, releases its locks and exits 0', { timeout: 90000 }, h.wrap(async (t) => {
    const s = await h.startServer('s-work')
    const rooms = Array.from({ length: 24 }, (_, i) => `wstop-${randomHex(3)}-${i}`)
    const clients = rooms.map((r, i) => h.client(s, r, { name: `w${i}` }))
    await Promise.all(clients.map((c) => c.synced()))
    // large documents, so compacting them all takes a while
    for (const c of clients) c.text.insert(0, pseudoText(400000, c.clientID))
    await sleep(1000)
    const w = await h.startWorker('w-stop', { REDIS_TASK_DEBOUNCE: '200', WORKER_CONCURRENCY: '2', SHUTDOWN_GRACE_MS: '20000' })
    await waitFor(() => /persisted document/.test(tailFile(w.logPath, 200)), { timeout: 30000, message: 'the worker to persist something' })
    w.proc.kill('SIGTERM')
    const status = await withTimeout(w.exited, 25000, `worker to exit\n${tailFile(w.logPath)}`)
    assert.deepEqual(status, { code: 0, signal: null })
    const log = tailFile(w.logPath, 400)
    const stopped = /worker stopped unfinished=(\d+) released_locks=(\d+)/.exec(log)
    assert.ok(stopped, `the worker says how it stopped\n${log}`)
    assert.equal(stopped[1], '0', 'no compaction left unfinished')
    assert.deepEqual(await scanKeys(h.redis, `${h.prefix}:lock:*`), [], 'no room lock left behind')
    t.diagnostic(`worker stopped with ${stopped[1]} rounds unfinished and ${stopped[2]} locks released; ${(log.match(/persisted document/g) || []).length} documents persisted`)
    for (const c of clients) c.destroy()
  }))
})
