// A server SIGKILLed behind a load balancer (ARCHITECTURE.md, "Failure handling").
// Four y-websocket clients reach two servers through a round-robin TCP load
// balancer that skips dead backends (faults.mjs LoadBalancer). The server
// holding half of them is SIGKILLed while everyone keeps editing: its clients
// reconnect through the balancer to the other server, and the edits they made
// while disconnected arrive everywhere. Then a third server joins the pool and
// the second one is killed too: everyone ends up on the third, nothing is lost.
// (Worker SIGKILL + restart is covered by worker-crash.test.mjs.)
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { Harness, waitFor, sleep, randomHex, fingerprint, killHard, xrangeRaw, decodeStreamMessage } from './harness.mjs'
import { LoadBalancer, Editors, waitConverged, sameContent } from './faults.mjs'

describe('server SIGKILLed behind a load balancer', { timeout: 110000 }, () => {
  const h = new Harness('fault-kill')
  /** @type {LoadBalancer} */
  let lb

  before(async () => {
    await h.setup(2)
    lb = await LoadBalancer.start(h.servers.map((s) => s.port))
    h.cleanups.push(() => lb.close())
  })
  after(async () => { await h.teardown() })

  /** the balancer, as a Client's "server" */
  const viaLb = () => ({ url: lb.url, describe: () => `[load balancer ${lb.url} -> ${lb.backends.join(',')}]` })

  /** backend port a client's current socket was routed to (null when not connected) */
  const backendOf = (c) => {
    const sock = /** @type {any} */ (c.provider.ws)?._socket
    return sock?.localPort ? (lb.routes.get(sock.localPort) ?? null) : null
  }

  it('clients of a killed server move to the others; edits made while disconnected arrive', { timeout: 100000 }, h.wrap(async (t) => {
    const [s1, s2] = h.servers
    const room = `kill-${randomHex(3)}`
    const clients = []
    for (let i = 0; i < 4; i++) {
      const c = h.client(viaLb(), room, { name: `c${i + 1}` })
      clients.push(c)
      await c.synced()
    }
    const on = (port) => clients.filter((c) => backendOf(c) === port)
    assert.equal(on(s1.port).length, 2, `round-robin put two clients on s1 (${clients.map((c) => `${c.name}->${backendOf(c)}`).join(' ')})`)
    assert.equal(on(s2.port).length, 2, 'and two on s2')

    const editors = new Editors(clients, { interval: 50 }).start()
    await sleep(1500)
    await waitConverged(clients, editors, { edits: editors.before(Date.now() - 300), timeout: 10000 })

    // ---- kill s1
    const moved = on(s1.port)
    let tKill = Date.now()
    await killHard(s1)
    await waitFor(() => moved.every((c) => backendOf(c) === s2.port && c.provider.synced), {
      timeout: 15000, message: () => `clients of s1 to resync on s2: ${moved.map((c) => `${c.name}->${backendOf(c)} synced=${c.provider.synced}`).join(' ')}`
    })
    const reconnectMs = Date.now() - tKill
    const upToKill = editors.before(Date.now())
    await waitConverged(clients, editors, { edits: upToKill, timeout: 15000 })
    const offline1 = editors.edits.filter((e) => !e.connected && moved.some((c) => c.name === e.client) && e.at >= tKill)
    t.diagnostic(`s1 killed: its clients ${moved.map((c) => c.name).join(',')} resynced on s2 after ${reconnectMs} ms, ` +
      `everyone held every edit after ${Date.now() - tKill} ms; ${offline1.length} edits were made while disconnected; balancer skipped a dead backend ${lb.skipped} times`)
    assert.ok(offline1.length > 0, 'some edits were made while disconnected')
    assert.deepEqual(editors.missing(clients[0].snapshot(), offline1), [], 'offline edits arrived')

    // ---- a third server joins, then s2 is killed: everyone ends up on s3
    const s3 = await h.startServer('s3')
    lb.backends = [s2.port, s3.port]
    await sleep(1000)
    const skippedBefore = lb.skipped
    tKill = Date.now()
    await killHard(s2)
    await waitFor(() => clients.every((c) => backendOf(c) === s3.port && c.provider.synced), {
      timeout: 15000, message: () => `every client to resync on s3: ${clients.map((c) => `${c.name}->${backendOf(c)} synced=${c.provider.synced}`).join(' ')}`
    })
    const reconnect2Ms = Date.now() - tKill
    await sleep(500)
    await editors.stop()
    const final = await waitConverged(clients, editors, { timeout: 15000 })
    const offline2 = editors.edits.filter((e) => !e.connected && e.at >= tKill)
    t.diagnostic(`s2 killed: all 4 clients resynced on s3 after ${reconnect2Ms} ms; ${offline2.length} edits made while disconnected; ` +
      `${lb.skipped - skippedBefore} dead-backend skips; ${editors.edits.length} edits in all, ${fingerprint(final)}`)
    assert.ok(offline2.length > 0, 'some edits were made while disconnected from s2')

    // a fresh client through the balancer has it all; the stream is valid
    const fresh = h.client(viaLb(), room, { name: 'fresh' })
    await fresh.synced()
    await waitFor(() => sameContent(fresh.snapshot(), final), { timeout: 10000, message: () => `fresh client: want ${fingerprint(final)} got ${fingerprint(fresh.snapshot())}` })
    for (const e of await xrangeRaw(h.redis, h.roomKey(room))) {
      assert.doesNotThrow(() => decodeStreamMessage(e.fields[1]), `stream entry ${e.id} decodes`)
    }
    assert.equal(s1.exitStatus?.signal, 'SIGKILL')
    assert.equal(s2.exitStatus?.signal, 'SIGKILL')
    assert.ok(s3.running, 's3 still running')
  }))
})
