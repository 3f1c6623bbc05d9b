// g. SIGTERM: connected clients get close code 1012 (service restart, so
//    y-websocket reconnects elsewhere) and the process exits 0 within 10 s.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { Harness, waitFor, withTimeout, randomHex, tailFile } from './harness.mjs'

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
})
