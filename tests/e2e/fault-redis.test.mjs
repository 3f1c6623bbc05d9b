// Redis faults while clients keep editing (ARCHITECTURE.md, "Failure handling").
// Four y-websocket clients on two servers edit one room continuously (edits go
// on locally while the servers cannot reach Redis), a worker persists to the
// filesystem. Each server and the worker use a PRIVATE redis-server of this file.
// a. Redis is SIGKILLed and restarted EMPTY on the same port (no persistence):
//    the servers ask their clients to resync, the clients' full two-way sync
//    puts everything back. Measures restart -> all clients agree.
// b. A TCP proxy in front of Redis is cut (connections destroyed, new ones
//    refused) for ~5 s and restored: /readyz answers 503 during the cut and
//    200 after; the servers never exit.
// In both: all clients converge to one content holding every edit every
// client made, a fresh client has it all, and after the worker ran the
// storage holds it all (checked again with Redis emptied: storage alone).
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import { Harness, waitFor, sleep, randomHex, fingerprint, deletePrefix } from './harness.mjs'
import { FsStorage, decodeStored } from './storage.mjs'
import { PrivateRedis, TcpProxy, Editors, httpGet, waitConverged, sameContent, workerStory, unrecoveredActors, assertRecovered } from './faults.mjs'

const OUTAGE_MS = 5000

/**
 * @param {'restart-empty' | 'proxy-cut'} kind
 */
function scenario (kind) {
  describe(`Redis fault: ${kind}`, { timeout: 100000 }, () => {
    const tag = kind === 'restart-empty' ? 'fault-redis-a' : 'fault-redis-b'
    /** @type {PrivateRedis} */
    let redis
    /** @type {TcpProxy | null} */
    let proxy = null
    /** @type {Harness} */
    let h
    /** @type {FsStorage} */
    let storage

    before(async () => {
      redis = await PrivateRedis.start({ tag })
      let url = redis.url
      if (kind === 'proxy-cut') {
        proxy = await TcpProxy.start(redis.port, { name: 'redis-proxy' })
        url = `redis://127.0.0.1:${proxy.port}`
      }
      h = new Harness(tag, { env: { REDIS: url, REDIS_COMMAND_TIMEOUT_MS: '2000' } })
      storage = new FsStorage(path.join(h.workDir, 'data'))
      // the harness's own Redis client talks to the private Redis directly
      h.redis = await redis.client()
      await h.startServer('s1')
      await h.startServer('s2')
      await h.startWorker('w1')
    })
    after(async () => {
      await h?.teardown()
      await proxy?.close()
      await redis?.close(h?.failed)
    })

    it('4 clients on 2 servers keep editing through the fault; all converge with every edit; fresh client and storage hold everything', { timeout: 90000 }, async (t) => h.wrap(async () => {
      const [s1, s2] = h.servers
      const room = `fault-${kind}-${randomHex(3)}`
      const clients = [
        h.client(s1, room, { name: 'c1' }), h.client(s1, room, { name: 'c2' }),
        h.client(s2, room, { name: 'c3' }), h.client(s2, room, { name: 'c4' })
      ]
      await Promise.all(clients.map((c) => c.synced()))
      const editors = new Editors(clients, { interval: 60 }).start()

      // something is persisted and live editing works before the fault
      await waitFor(async () => (await storage.pieces(room)).length > 0, { timeout: 20000, message: 'first persist of the room' })
      await waitConverged(clients, editors, { edits: editors.before(Date.now() - 500), timeout: 10000 })
      for (const s of h.servers) assert.equal((await httpGet(s.port)).status, 200, `${s.name} /readyz before the fault`)

      // the fault
      const tFault = Date.now()
      if (kind === 'restart-empty') await redis.kill()
      else await proxy.cut('refuse')
      // /readyz reports it
      for (const s of h.servers) {
        await waitFor(async () => (await httpGet(s.port)).status === 503, { timeout: 4000, interval: 100, message: `${s.name} /readyz to answer 503 during the fault` })
      }
      const remaining = OUTAGE_MS - (Date.now() - tFault)
      if (remaining > 0) await sleep(remaining)
      const madeDuringOutage = editors.edits.filter((e) => e.at > tFault).length

      // the repair
      if (kind === 'restart-empty') await redis.start()
      else await proxy.restore()
      const tRestore = Date.now()
      if (kind === 'restart-empty') assert.equal(await h.redis.dbSize(), 0, 'Redis came back empty')

      // every edit made up to the restore reaches every client (editing goes on meanwhile)
      const upToRestore = editors.before(tRestore)
      let tAgreeOld = null
      await waitFor(() => clients.every((c) => editors.missing(c.snapshot(), upToRestore).length === 0), {
        timeout: 30000,
        interval: 20,
        message: () => 'every client to hold every edit made up to the restore: ' +
          clients.map((c) => `${c.name} missing ${editors.missing(c.snapshot(), upToRestore).length}/${upToRestore.length} closes=${JSON.stringify(c.closeEvents.slice(-4))}`).join('; ')
      })
      tAgreeOld = Date.now()

      // stop editing; everyone agrees on one content holding every edit
      await sleep(1000)
      await editors.stop()
      const tStop = Date.now()
      const final = await waitConverged(clients, editors, { timeout: 20000 })
      const tAgree = Date.now()
      const closes = clients.map((c) => `${c.name}:${c.closeEvents.map((e) => e?.code ?? 'local').join(',')}`).join(' ')
      const msg = `${kind}: outage ${tRestore - tFault} ms, ${madeDuringOutage} edits made during it, ${editors.edits.length} edits in all; ` +
        `restore -> every client holds every edit made before it: ${tAgreeOld - tRestore} ms; ` +
        `editing stopped -> all identical: ${tAgree - tStop} ms; close codes ${closes}`
      t.diagnostic(msg)
      assert.ok(madeDuringOutage > 0, 'clients edited during the outage')
      // ready again, the stream holds only valid messages, a fresh client on
      // either server has it all
      await assertRecovered(h, room, final, 'the restore')

      // every persistence actor of the worker that failed during the outage works again
      let lost = []
      await waitFor(() => (lost = unrecoveredActors(h.workers[0])).length === 0, {
        timeout: 20000, interval: 250, message: () => `the worker's persistence actors to recover after the outage; still stopped: ${lost.join(', ')} (${workerStory(h.workers[0])})`
      })
      // the worker (recovered from the fault) persists all of it
      let stored = null
      await waitFor(async () => {
        stored = decodeStored(await storage.pieces(room))
        return sameContent(stored, final)
      }, {
        timeout: 30000,
        interval: 200,
        message: () => `storage to hold every edit: want ${fingerprint(final)} got ${stored && fingerprint(stored)} missing ${stored && editors.missing(stored).length}; ` +
          `worker log: ${workerStory(h.workers[0])}`
      })
      assert.deepEqual(editors.missing(stored).map((e) => e.marker), [], 'storage lost no edit')
      t.diagnostic(`storage held every edit ${Date.now() - tStop} ms after editing stopped (${Date.now() - tRestore} ms after the restore)`)

      // and with Redis emptied, storage alone serves it
      for (const c of clients) c.destroy()
      await sleep(300)
      await deletePrefix(h.redis, h.prefix)
      const late = h.client(s2, room, { name: 'late' })
      await late.synced()
      await waitFor(() => sameContent(late.snapshot(), final), { timeout: 10000, message: () => `client served from storage only: want ${fingerprint(final)} got ${fingerprint(late.snapshot())}` })
      late.destroy()

      for (const p of h.procs) assert.ok(p.running, `${p.describe()} never exited`)
    })(t))
  })
}

scenario('restart-empty')
scenario('proxy-cut')
