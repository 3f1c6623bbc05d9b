// Sentinel failover (README, "Redis deployments"): one master, one replica
// and three sentinels, all redis-server processes of this test. Two servers
// and a worker find the master through REDIS_SENTINELS / REDIS_SENTINEL_MASTER.
// Four y-websocket clients on the two servers keep editing while the master
// is SIGKILLed: the sentinels promote the replica, the servers' listener,
// publishing connections and pool, and the worker, reconnect to it, sessions
// resync (which brings back what the old master had not replicated), and
// every edit reaches every client and storage. Prints the failover and
// convergence times. Run twice: plain, and with every Redis and Sentinel
// speaking TLS only (a CA made by openssl here, REDIS=rediss://…).
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import { Harness, waitFor, sleep, randomHex, fingerprint } from './harness.mjs'
import { FsStorage, decodeStored } from './storage.mjs'
import { Editors, waitConverged, sameContent, workerStory, assertRecovered } from './faults.mjs'
import { startSentinelSet } from './redis-topology.mjs'

for (const tls of [false, true]) describe(`Redis Sentinel failover${tls ? ' over TLS' : ''}`, { timeout: 150000 }, () => {
  let set
  /** @type {Harness} */
  let h
  /** @type {FsStorage} */
  let storage

  before(async () => {
    set = await startSentinelSet({ tag: tls ? 'redis-sentinel-tls' : 'redis-sentinel', tls })
    h = new Harness(tls ? 'redis-sentinel-tls' : 'redis-sentinel', { env: { ...set.env, REDIS_COMMAND_TIMEOUT_MS: '2000' } })
    storage = new FsStorage(path.join(h.workDir, 'data'))
    h.redis = await set.client()
    await h.startServer('s1')
    await h.startServer('s2')
    await h.startWorker('w1')
  })
  after(async () => {
    await h?.teardown()
    await set?.stop()
  })

  it('master SIGKILLed while 4 clients on 2 servers edit: every edit reaches every client and storage', { timeout: 120000 }, async (t) => h.wrap(async () => {
    const [s1, s2] = h.servers
    const room = `sentinel-${randomHex(3)}`
    const clients = [
      h.client(s1, room, { name: 'c1' }), h.client(s1, room, { name: 'c2' }),
      h.client(s2, room, { name: 'c3' }), h.client(s2, room, { name: 'c4' })
    ]
    await Promise.all(clients.map((c) => c.synced()))
    const editors = new Editors(clients, { interval: 60 }).start()

    // editing works and the worker persists before the failover
    await waitFor(async () => (await storage.pieces(room)).length > 0, { timeout: 20000, message: 'first persist of the room' })
    await waitConverged(clients, editors, { edits: editors.before(Date.now() - 500), timeout: 10000 })
    const oldMaster = set.master.port
    assert.equal(await set.masterPort(), oldMaster)

    const tKill = Date.now()
    await set.master.kill()
    await waitFor(async () => (await set.masterPort()) === set.replica.port, {
      timeout: 30000, interval: 100, message: 'the sentinels to promote the replica'
    })
    const tPromoted = Date.now()
    // the test's own client follows too
    try { await h.redis.disconnect() } catch {}
    h.redis = await set.client()

    // every edit made up to the promotion reaches every client (editing goes on)
    const upToPromotion = editors.before(tPromoted)
    await waitFor(() => clients.every((c) => editors.missing(c.snapshot(), upToPromotion).length === 0), {
      timeout: 40000,
      interval: 20,
      message: () => 'every client to hold every edit made up to the promotion: ' +
        clients.map((c) => `${c.name} missing ${editors.missing(c.snapshot(), upToPromotion).length}/${upToPromotion.length} closes=${JSON.stringify(c.closeEvents.slice(-4))}`).join('; ')
    })
    const tAgreeOld = Date.now()
    await sleep(1000)
    await editors.stop()
    const tStop = Date.now()
    const final = await waitConverged(clients, editors, { timeout: 20000 })
    const tAgree = Date.now()
    const closes = clients.map((c) => `${c.name}:${c.closeEvents.map((e) => e?.code ?? 'local').join(',')}`).join(' ')
    t.diagnostic(`sentinel failover${tls ? ' (TLS)' : ''}: master SIGKILL -> replica promoted ${tPromoted - tKill} ms; ` +
      `SIGKILL -> every client holds every edit made before the promotion ${tAgreeOld - tKill} ms; ` +
      `editing stopped -> all identical ${tAgree - tStop} ms; ${editors.edits.length} edits in all; close codes ${closes}`)

    await assertRecovered(h, room, final, 'the failover')
    // the worker, now on the new master, persists all of it
    let stored = null
    await waitFor(async () => {
      stored = decodeStored(await storage.pieces(room))
      return sameContent(stored, final)
    }, {
      timeout: 40000,
      interval: 200,
      message: () => `storage to hold every edit: want ${fingerprint(final)} got ${stored && fingerprint(stored)} missing ${stored && editors.missing(stored).length}; worker: ${workerStory(h.workers[0])}`
    })
    assert.deepEqual(editors.missing(stored).map((e) => e.marker), [], 'storage lost no edit')
    t.diagnostic(`storage held every edit ${Date.now() - tKill} ms after the SIGKILL`)
    for (const p of h.procs) assert.ok(p.running, `${p.describe()} never exited`)
  })(t))
})
